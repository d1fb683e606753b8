//! Custom CPU templates (`PUT /cpu-config`): KVM capabilities, CPUID and MSR modifiers
//! (x86_64), register and vCPU feature modifiers (aarch64).

use serde::{Deserialize, Serialize};

use super::check::{Problems, check_bitmap, check_cpu_number};
use crate::api::models;

/// A custom CPU template. Every list is optional; an empty template changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// KVM capabilities as numbers, `"121"` to add, `"!121"` to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm_capabilities: Vec<String>,
    /// CPUID leaf modifiers (x86_64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    /// Model-specific register modifiers (x86_64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msr_modifiers: Vec<MsrModifier>,
    /// Register modifiers (aarch64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reg_modifiers: Vec<ArmRegisterModifier>,
    /// vCPU feature modifiers (aarch64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_features: Vec<VcpuFeatures>,
}

/// Modifies registers of one CPUID leaf/subleaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    /// Leaf index: hex (`0x`), binary (`0b`) or decimal, fitting in 32 bits.
    pub leaf: String,
    /// Subleaf index, same format.
    pub subleaf: String,
    /// KVM CPUID flags for this entry.
    #[serde(default)]
    pub flags: i32,
    /// Register modifiers.
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Modifies one CPUID register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    /// Which register.
    pub register: CpuidRegister,
    /// `0b` then 32 characters of `0` (clear), `1` (set) or `x` (keep).
    pub bitmap: String,
}

/// Modifies one MSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    /// 32-bit MSR address: hex, binary or decimal.
    pub addr: String,
    /// `0b` then 64 characters of `0`, `1` or `x` (`_` separators allowed).
    pub bitmap: String,
}

/// Modifies one aarch64 register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmRegisterModifier {
    /// 64-bit register id: hex, binary or decimal.
    pub addr: String,
    /// `0b` then 1 to 128 characters of `0`, `1` or `x` (`_` separators allowed).
    pub bitmap: String,
}

/// Modifies one word of `kvm_vcpu_init.features` (aarch64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuFeatures {
    /// Index in the features array (non-negative).
    pub index: i32,
    /// `0b` then 32 characters of `0`, `1` or `x`.
    pub bitmap: String,
}

impl CpuConfig {
    pub(crate) fn check(&self, at: &str, p: &mut Problems) {
        for (i, cap) in self.kvm_capabilities.iter().enumerate() {
            let digits = cap.strip_prefix('!').unwrap_or(cap);
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || digits.parse::<u32>().is_err()
            {
                p.push(
                    format!("{at}.kvm_capabilities[{i}]"),
                    format!("{cap:?} must be a capability number, optionally prefixed with '!'"),
                );
            }
        }
        let u32_max = u64::from(u32::MAX);
        for (i, leaf) in self.cpuid_modifiers.iter().enumerate() {
            let here = format!("{at}.cpuid_modifiers[{i}]");
            check_cpu_number(&format!("{here}.leaf"), &leaf.leaf, u32_max, p);
            check_cpu_number(&format!("{here}.subleaf"), &leaf.subleaf, u32_max, p);
            for (j, m) in leaf.modifiers.iter().enumerate() {
                check_bitmap(
                    &format!("{here}.modifiers[{j}].bitmap"),
                    &m.bitmap,
                    32,
                    false,
                    false,
                    p,
                );
            }
        }
        for (i, msr) in self.msr_modifiers.iter().enumerate() {
            let here = format!("{at}.msr_modifiers[{i}]");
            check_cpu_number(&format!("{here}.addr"), &msr.addr, u32_max, p);
            check_bitmap(&format!("{here}.bitmap"), &msr.bitmap, 64, false, true, p);
        }
        for (i, reg) in self.reg_modifiers.iter().enumerate() {
            let here = format!("{at}.reg_modifiers[{i}]");
            check_cpu_number(&format!("{here}.addr"), &reg.addr, u64::MAX, p);
            check_bitmap(&format!("{here}.bitmap"), &reg.bitmap, 128, true, true, p);
        }
        for (i, f) in self.vcpu_features.iter().enumerate() {
            let here = format!("{at}.vcpu_features[{i}]");
            if f.index < 0 {
                p.push(format!("{here}.index"), "must not be negative");
            }
            check_bitmap(&format!("{here}.bitmap"), &f.bitmap, 32, false, false, p);
        }
    }

    pub(crate) fn to_wire(&self) -> models::CpuConfig {
        fn list<T, U>(items: &[T], f: impl Fn(&T) -> U) -> Option<Vec<U>> {
            (!items.is_empty()).then(|| items.iter().map(f).collect())
        }
        models::CpuConfig {
            kvm_capabilities: list(&self.kvm_capabilities, Clone::clone),
            cpuid_modifiers: list(&self.cpuid_modifiers, |l| models::CpuidLeafModifier {
                leaf: l.leaf.clone(),
                subleaf: l.subleaf.clone(),
                flags: l.flags,
                modifiers: l
                    .modifiers
                    .iter()
                    .map(|m| models::CpuidRegisterModifier {
                        register: match m.register {
                            CpuidRegister::Eax => models::CpuidRegister::Eax,
                            CpuidRegister::Ebx => models::CpuidRegister::Ebx,
                            CpuidRegister::Ecx => models::CpuidRegister::Ecx,
                            CpuidRegister::Edx => models::CpuidRegister::Edx,
                        },
                        bitmap: m.bitmap.clone(),
                    })
                    .collect(),
            }),
            msr_modifiers: list(&self.msr_modifiers, |m| models::MsrModifier {
                addr: m.addr.clone(),
                bitmap: m.bitmap.clone(),
            }),
            reg_modifiers: list(&self.reg_modifiers, |m| models::ArmRegisterModifier {
                addr: m.addr.clone(),
                bitmap: m.bitmap.clone(),
            }),
            vcpu_features: list(&self.vcpu_features, |f| models::VcpuFeatures {
                index: f.index,
                bitmap: f.bitmap.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(c: &CpuConfig) -> Vec<String> {
        let mut p = Problems::default();
        c.check("cpu_config", &mut p);
        p.into_vec().into_iter().map(|x| x.field).collect()
    }

    #[test]
    fn each_malformed_entry_is_reported_at_its_path() {
        let c = CpuConfig {
            kvm_capabilities: vec!["121".into(), "!7".into(), "x1".into(), "!".into()],
            cpuid_modifiers: vec![CpuidLeafModifier {
                leaf: "0x1".into(),
                subleaf: "zz".into(),
                flags: 0,
                modifiers: vec![CpuidRegisterModifier {
                    register: CpuidRegister::Ecx,
                    bitmap: "0b1".into(),
                }],
            }],
            msr_modifiers: vec![MsrModifier {
                addr: "0x1_0000_0000".into(),
                bitmap: format!("0b{}", "x".repeat(64)),
            }],
            reg_modifiers: vec![ArmRegisterModifier {
                addr: "0x6030000000100002".into(),
                bitmap: format!("0b{}", "1".repeat(129)),
            }],
            vcpu_features: vec![VcpuFeatures {
                index: -1,
                bitmap: format!("0b{}", "0".repeat(32)),
            }],
        };
        assert_eq!(
            fields(&c),
            [
                "cpu_config.kvm_capabilities[2]",
                "cpu_config.kvm_capabilities[3]",
                "cpu_config.cpuid_modifiers[0].subleaf",
                "cpu_config.cpuid_modifiers[0].modifiers[0].bitmap",
                "cpu_config.msr_modifiers[0].addr",
                "cpu_config.reg_modifiers[0].bitmap",
                "cpu_config.vcpu_features[0].index",
            ]
        );
    }

    #[test]
    fn empty_lists_are_omitted_on_the_wire() {
        let wire = serde_json::to_value(CpuConfig::default().to_wire()).unwrap();
        assert_eq!(wire, serde_json::json!({}));
    }
}
