//! Shared helpers for the double's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use flick_testkit::{FcDouble, FcDoubleOptions, raw_request};
use serde_json::{Value, json};

/// Sends a request; returns the status and the parsed body (`Null` when empty).
pub async fn call(d: &FcDouble, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let (status, resp) = raw_request(d.socket_path(), method, path, text.as_deref()).await;
    let value = if resp.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&resp).unwrap_or(Value::String(resp))
    };
    (status, value)
}

/// The `fault_message` of an answer.
pub fn fault(v: &Value) -> String {
    v["fault_message"].as_str().unwrap_or_default().to_string()
}

/// Writes a fake kernel into the double's directory and returns its path.
pub fn kernel(d: &FcDouble) -> PathBuf {
    let path = d.dir().join("vmlinux");
    std::fs::write(&path, b"\x7fELF").unwrap();
    path
}

/// Writes a disk image into the double's directory.
pub fn disk(d: &FcDouble, name: &str) -> PathBuf {
    let path = d.dir().join(name);
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    path
}

/// Configures a kernel and starts the microVM.
pub async fn boot(d: &FcDouble) {
    let k = kernel(d);
    let (s, b) = call(
        d,
        "PUT",
        "/boot-source",
        Some(json!({"kernel_image_path": k})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = call(
        d,
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
}

/// A double with default options.
pub fn double() -> FcDouble {
    FcDouble::spawn(FcDoubleOptions::default())
}

/// The microVM state from `GET /`.
pub async fn state(d: &FcDouble) -> String {
    let (_, v) = call(d, "GET", "/", None).await;
    v["state"].as_str().unwrap_or_default().to_string()
}

pub const PRE_BOOT: &str = "The requested operation is not supported before starting the microVM.";
pub const POST_BOOT: &str = "The requested operation is not supported after starting the microVM.";
