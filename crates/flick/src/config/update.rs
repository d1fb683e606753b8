//! Updates sent with `PATCH`: drive backing files and rate limiters, interface and pmem rate
//! limiters, balloon size and statistics interval, memory hotplug size (post-boot), and
//! machine-config changes (pre-boot). Each validates itself and reports every problem as one
//! `INVALID_CONFIG` error, like [`VmConfig::validate`](super::VmConfig::validate).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check::{Problems, check_host_path, check_id};
use super::payloads::ApiCall;
use super::rate_limiter::RateLimiter;
use super::resources::{CpuTemplate, HugePages};
use super::validate::{MAX_VCPUS, check_memory};
use crate::api::models;

/// A post-boot drive change (`PATCH /drives/{drive_id}`): a new backing file (after the guest
/// let go of the old one) and/or a new rate limiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive.
    pub drive_id: String,
    /// New backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// New rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl DriveUpdate {
    /// Validates and converts into the wire body.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) listing every problem.
    pub fn to_payload(&self) -> crate::Result<models::PartialDrive> {
        let mut p = Problems::default();
        check_id("drive_id", &self.drive_id, &mut p);
        if let Some(path) = &self.path_on_host {
            check_host_path("path_on_host", path, &mut p);
        }
        if let Some(rl) = &self.rate_limiter {
            rl.check("rate_limiter", &mut p);
        }
        if self.path_on_host.is_none() && self.rate_limiter.is_none() {
            p.push("drive_id", "the update changes nothing");
        }
        p.into_result("drive update")?;
        Ok(models::PartialDrive {
            drive_id: self.drive_id.clone(),
            path_on_host: self.path_on_host.clone(),
            rate_limiter: self.rate_limiter.as_ref().map(RateLimiter::to_wire),
        })
    }

    /// The validated request.
    ///
    /// # Errors
    /// As [`to_payload`](Self::to_payload).
    pub fn api_call(&self) -> crate::Result<ApiCall> {
        let body = self.to_payload()?;
        Ok(ApiCall::patch(format!("/drives/{}", body.drive_id), &body))
    }
}

/// A post-boot interface change (`PATCH /network-interfaces/{iface_id}`): new rate limiters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface.
    pub iface_id: String,
    /// New receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterfaceUpdate {
    /// Validates and converts into the wire body.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) listing every problem.
    pub fn to_payload(&self) -> crate::Result<models::PartialNetworkInterface> {
        let mut p = Problems::default();
        check_id("iface_id", &self.iface_id, &mut p);
        if let Some(rl) = &self.rx_rate_limiter {
            rl.check("rx_rate_limiter", &mut p);
        }
        if let Some(rl) = &self.tx_rate_limiter {
            rl.check("tx_rate_limiter", &mut p);
        }
        if self.rx_rate_limiter.is_none() && self.tx_rate_limiter.is_none() {
            p.push("iface_id", "the update changes nothing");
        }
        p.into_result("network interface update")?;
        Ok(models::PartialNetworkInterface {
            iface_id: self.iface_id.clone(),
            rx_rate_limiter: self.rx_rate_limiter.as_ref().map(RateLimiter::to_wire),
            tx_rate_limiter: self.tx_rate_limiter.as_ref().map(RateLimiter::to_wire),
        })
    }

    /// The validated request.
    ///
    /// # Errors
    /// As [`to_payload`](Self::to_payload).
    pub fn api_call(&self) -> crate::Result<ApiCall> {
        let body = self.to_payload()?;
        Ok(ApiCall::patch(
            format!("/network-interfaces/{}", body.iface_id),
            &body,
        ))
    }
}

/// A post-boot pmem change (`PATCH /pmem/{id}`): a new rate limiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemUpdate {
    /// The device.
    pub id: String,
    /// New rate limiter.
    pub rate_limiter: RateLimiter,
}

impl PmemUpdate {
    /// Validates and converts into the wire body.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) listing every problem.
    pub fn to_payload(&self) -> crate::Result<models::PartialPmem> {
        let mut p = Problems::default();
        check_id("id", &self.id, &mut p);
        self.rate_limiter.check("rate_limiter", &mut p);
        p.into_result("pmem update")?;
        Ok(models::PartialPmem {
            id: self.id.clone(),
            rate_limiter: Some(self.rate_limiter.to_wire()),
        })
    }

    /// The validated request.
    ///
    /// # Errors
    /// As [`to_payload`](Self::to_payload).
    pub fn api_call(&self) -> crate::Result<ApiCall> {
        let body = self.to_payload()?;
        Ok(ApiCall::patch(format!("/pmem/{}", body.id), &body))
    }
}

/// A post-boot balloon change: a new target size (`PATCH /balloon`) and/or a new statistics
/// interval (`PATCH /balloon/statistics`; statistics cannot be switched on or off after boot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// New target size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_mib: Option<u32>,
    /// New statistics interval in seconds (positive: 0 would switch statistics off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u32>,
}

impl BalloonUpdate {
    /// Validates against the VM's configuration and returns the one or two requests, size
    /// first. The target may not exceed the guest's memory; the interval can only change when
    /// statistics were enabled before boot.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) listing every problem.
    pub fn api_calls(&self, current: &super::VmConfig) -> crate::Result<Vec<ApiCall>> {
        let mut p = Problems::default();
        let mem_size_mib = current.machine_config.mem_size_mib;
        let Some(balloon) = &current.balloon else {
            p.push("balloon", "the VM has no balloon device");
            return p.into_result("balloon update").map(|()| Vec::new());
        };
        if let Some(amount) = self.amount_mib
            && amount > mem_size_mib
        {
            p.push(
                "amount_mib",
                format!("{amount} MiB is more than the guest's {mem_size_mib} MiB of memory"),
            );
        }
        if let Some(interval) = self.stats_polling_interval_s {
            if interval == 0 {
                p.push(
                    "stats_polling_interval_s",
                    "must be positive; statistics cannot be switched off after boot",
                );
            } else if balloon.stats_polling_interval_s.unwrap_or(0) == 0 {
                p.push(
                    "stats_polling_interval_s",
                    "statistics were not enabled before boot and cannot be switched on after",
                );
            }
        }
        if self.amount_mib.is_none() && self.stats_polling_interval_s.is_none() {
            p.push("amount_mib", "the update changes nothing");
        }
        p.into_result("balloon update")?;
        let mut out = Vec::new();
        if let Some(amount_mib) = self.amount_mib {
            out.push(ApiCall::patch(
                "/balloon",
                &models::BalloonUpdate { amount_mib },
            ));
        }
        if let Some(stats_polling_interval_s) = self.stats_polling_interval_s {
            out.push(ApiCall::patch(
                "/balloon/statistics",
                &models::BalloonStatsUpdate {
                    stats_polling_interval_s,
                },
            ));
        }
        Ok(out)
    }
}

/// A pre-boot partial machine-config change (`PATCH /machine-config`). Fields left `None` keep
/// their current value; the checks that involve two fields use `current` for the other one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New memory size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u32>,
    /// New SMT setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// New static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// New dirty page tracking setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// New huge page setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// The machine config after this update.
    #[must_use]
    pub fn apply_to(&self, current: &super::MachineConfig) -> super::MachineConfig {
        super::MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(current.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(current.mem_size_mib),
            smt: self.smt.unwrap_or(current.smt),
            cpu_template: self.cpu_template.or(current.cpu_template),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(current.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(current.huge_pages),
        }
    }

    /// Validates the update applied on top of `current` (the vCPU, memory, balloon and CPU
    /// template rules of [`VmConfig::validate`](super::VmConfig::validate)) and converts it
    /// into the wire body.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) listing every problem.
    pub fn to_payload(
        &self,
        current: &super::VmConfig,
    ) -> crate::Result<models::MachineConfigurationUpdate> {
        let mut p = Problems::default();
        if *self == Self::default() {
            p.push("machine_config", "the update changes nothing");
        }
        let next = self.apply_to(&current.machine_config);
        let vcpus = next.vcpu_count;
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            p.push("vcpu_count", format!("{vcpus} is outside 1..={MAX_VCPUS}"));
        } else if next.smt && vcpus > 1 && !vcpus.is_multiple_of(2) {
            let field = if self.vcpu_count.is_some() {
                "vcpu_count"
            } else {
                "smt"
            };
            p.push(
                field,
                format!("{vcpus} vCPUs is odd; with SMT it must be 1 or even"),
            );
        }
        let field = if self.mem_size_mib.is_some() || self.huge_pages.is_none() {
            "mem_size_mib"
        } else {
            "huge_pages"
        };
        check_memory(field, next.mem_size_mib, next.huge_pages, &mut p);
        if let Some(b) = &current.balloon
            && b.amount_mib > next.mem_size_mib
        {
            p.push(
                "mem_size_mib",
                format!(
                    "{} MiB is less than the balloon's {} MiB target",
                    next.mem_size_mib, b.amount_mib
                ),
            );
        }
        if current.cpu_config.is_some() && self.cpu_template.is_some_and(|t| t != CpuTemplate::None)
        {
            p.push(
                "cpu_template",
                "conflicts with cpu_config: Firecracker applies only one CPU template",
            );
        }
        p.into_result("machine config update")?;
        Ok(models::MachineConfigurationUpdate {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            smt: self.smt,
            track_dirty_pages: self.track_dirty_pages,
            cpu_template: self.cpu_template.map(CpuTemplate::to_wire),
            huge_pages: self.huge_pages.map(|h| match h {
                HugePages::None => models::HugePages::None,
                HugePages::Huge2M => models::HugePages::Huge2M,
            }),
        })
    }

    /// The validated request.
    ///
    /// # Errors
    /// As [`to_payload`](Self::to_payload).
    pub fn api_call(&self, current: &super::VmConfig) -> crate::Result<ApiCall> {
        Ok(ApiCall::patch(
            "/machine-config",
            &self.to_payload(current)?,
        ))
    }
}

/// A post-boot change of the hot-plugged memory size (`PATCH /hotplug/memory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugUpdate {
    /// New plugged size in MiB: a multiple of the block size, at most the total.
    pub requested_size_mib: u64,
}

impl MemoryHotplugUpdate {
    /// Validates against the configured hotplug region and returns the request.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) listing every problem.
    pub fn api_call(&self, region: &super::MemoryHotplug) -> crate::Result<ApiCall> {
        let mut p = Problems::default();
        let block = region
            .block_size_mib
            .unwrap_or(super::MemoryHotplug::DEFAULT_BLOCK_SIZE_MIB)
            .max(1);
        let want = self.requested_size_mib;
        if want > region.total_size_mib {
            p.push(
                "requested_size_mib",
                format!(
                    "{want} MiB is more than the {} MiB hotplug region",
                    region.total_size_mib
                ),
            );
        }
        if !want.is_multiple_of(block) {
            p.push(
                "requested_size_mib",
                format!("{want} MiB is not a multiple of the {block} MiB block size"),
            );
        }
        p.into_result("memory hotplug update")?;
        Ok(ApiCall::patch(
            "/hotplug/memory",
            &models::MemoryHotplugSizeUpdate {
                requested_size_mib: Some(want),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balloon, CpuConfig, MachineConfig, MemoryHotplug, TokenBucket, VmConfig};
    use std::time::Duration;

    fn fields(err: &crate::Error) -> Vec<String> {
        err.details().unwrap()["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["field"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn drive_update_converts_and_rejects() {
        let ok = DriveUpdate {
            drive_id: "data".into(),
            path_on_host: Some("/srv/new.img".into()),
            rate_limiter: None,
        };
        let call = ok.api_call().unwrap();
        assert_eq!(call.method, http::Method::PATCH);
        assert_eq!(call.path, "/drives/data");
        assert_eq!(
            call.body,
            serde_json::json!({"drive_id": "data", "path_on_host": "/srv/new.img"})
        );
        let bad = DriveUpdate {
            drive_id: "a-b".into(),
            path_on_host: Some("rel".into()),
            rate_limiter: Some(RateLimiter::ops(TokenBucket::new(0, Duration::ZERO))),
        };
        let err = bad.to_payload().unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidConfig);
        assert_eq!(
            fields(&err),
            [
                "drive_id",
                "path_on_host",
                "rate_limiter.ops.size",
                "rate_limiter.ops.refill_time_ms"
            ]
        );
        let empty = DriveUpdate {
            drive_id: "a".into(),
            path_on_host: None,
            rate_limiter: None,
        };
        assert!(empty.to_payload().is_err());
    }

    #[test]
    fn interface_and_pmem_updates() {
        let rl = RateLimiter::bandwidth(TokenBucket::new(1000, Duration::from_millis(100)));
        let n = NetworkInterfaceUpdate {
            iface_id: "eth0".into(),
            rx_rate_limiter: Some(rl.clone()),
            tx_rate_limiter: None,
        };
        let call = n.api_call().unwrap();
        assert_eq!(call.path, "/network-interfaces/eth0");
        assert_eq!(
            call.body["rx_rate_limiter"]["bandwidth"]["refill_time"],
            100
        );
        let none = NetworkInterfaceUpdate {
            iface_id: "eth0".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(none.to_payload().is_err());
        let pm = PmemUpdate {
            id: "pm0".into(),
            rate_limiter: rl,
        };
        assert_eq!(pm.api_call().unwrap().path, "/pmem/pm0");
    }

    #[test]
    fn balloon_update_checks_memory_and_stats() {
        let with_stats = VmConfig::new("/k", "/r").with_balloon(Balloon {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_polling_interval_s: Some(1),
            ..Balloon::default()
        });
        let u = BalloonUpdate {
            amount_mib: Some(64),
            stats_polling_interval_s: Some(5),
        };
        let calls = u.api_calls(&with_stats).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].path, "/balloon");
        assert_eq!(calls[0].body, serde_json::json!({"amount_mib": 64}));
        assert_eq!(calls[1].path, "/balloon/statistics");
        assert_eq!(
            calls[1].body,
            serde_json::json!({"stats_polling_interval_s": 5})
        );
        let bad = BalloonUpdate {
            amount_mib: Some(256),
            stats_polling_interval_s: Some(0),
        };
        let err = bad.api_calls(&with_stats).unwrap_err();
        assert_eq!(fields(&err), ["amount_mib", "stats_polling_interval_s"]);
        assert!(BalloonUpdate::default().api_calls(&with_stats).is_err());

        // Statistics that were off before boot stay off.
        let mut no_stats = with_stats.clone();
        no_stats.balloon.as_mut().unwrap().stats_polling_interval_s = Some(0);
        let stats = BalloonUpdate {
            amount_mib: None,
            stats_polling_interval_s: Some(5),
        };
        assert_eq!(
            fields(&stats.api_calls(&no_stats).unwrap_err()),
            ["stats_polling_interval_s"]
        );
        let no_balloon = VmConfig::new("/k", "/r");
        assert_eq!(fields(&u.api_calls(&no_balloon).unwrap_err()), ["balloon"]);
    }

    #[test]
    fn machine_update_uses_current_values_for_cross_checks() {
        let current = VmConfig::new("/k", "/r").with_machine_config(MachineConfig {
            vcpu_count: 3,
            mem_size_mib: 255,
            ..MachineConfig::default()
        });
        let smt = MachineConfigUpdate {
            smt: Some(true),
            ..Default::default()
        };
        assert_eq!(fields(&smt.to_payload(&current).unwrap_err()), ["smt"]);
        let huge = MachineConfigUpdate {
            huge_pages: Some(HugePages::Huge2M),
            ..Default::default()
        };
        assert_eq!(
            fields(&huge.to_payload(&current).unwrap_err()),
            ["huge_pages"]
        );
        let ok = MachineConfigUpdate {
            vcpu_count: Some(4),
            smt: Some(true),
            ..Default::default()
        };
        let call = ok.api_call(&current).unwrap();
        assert_eq!(call.path, "/machine-config");
        assert_eq!(call.body, serde_json::json!({"vcpu_count": 4, "smt": true}));
        let next = ok.apply_to(&current.machine_config);
        assert_eq!(
            (next.vcpu_count, next.smt, next.mem_size_mib),
            (4, true, 255)
        );
        assert!(MachineConfigUpdate::default().to_payload(&current).is_err());
        let zero = MachineConfigUpdate {
            vcpu_count: Some(0),
            mem_size_mib: Some(0),
            ..Default::default()
        };
        assert_eq!(
            fields(&zero.to_payload(&current).unwrap_err()),
            ["vcpu_count", "mem_size_mib"]
        );

        // Shrinking memory below the balloon target, or a static template next to a custom one.
        let busy = current
            .clone()
            .with_balloon(Balloon {
                amount_mib: 200,
                ..Balloon::default()
            })
            .with_cpu_config(CpuConfig::default());
        let shrink = MachineConfigUpdate {
            mem_size_mib: Some(128),
            cpu_template: Some(CpuTemplate::C3),
            ..Default::default()
        };
        assert_eq!(
            fields(&shrink.to_payload(&busy).unwrap_err()),
            ["mem_size_mib", "cpu_template"]
        );
    }

    #[test]
    fn hotplug_update_respects_region() {
        let region = MemoryHotplug::new(1024);
        let call = MemoryHotplugUpdate {
            requested_size_mib: 512,
        }
        .api_call(&region)
        .unwrap();
        assert_eq!(call.body, serde_json::json!({"requested_size_mib": 512}));
        let err = MemoryHotplugUpdate {
            requested_size_mib: 2049,
        }
        .api_call(&region)
        .unwrap_err();
        assert_eq!(
            err.details().unwrap()["problems"].as_array().unwrap().len(),
            2
        );
    }
}
