//! What the admin plane knows of the broker's configuration: retention and
//! listeners.

use std::time::Duration;

/// A listener of the broker, as `Status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// `guest`, `admin-unix`, `admin-tls` or `metrics`.
    pub kind: String,
    /// Address, or the socket's path.
    pub address: String,
}

/// What the admin plane knows of the broker's configuration.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// `[keys] retired_retention_days`: the default of `VolumePurgeRetired`
    /// and the "kept until" dates.
    pub retired_retention: Duration,
    /// What `Status` lists as the broker's listeners.
    pub listeners: Vec<ListenerInfo>,
    /// `[limits] max_policy_bytes`.
    pub max_policy_bytes: usize,
    /// `[limits] max_description_bytes`.
    pub max_description_bytes: usize,
}

impl Default for AdminSettings {
    /// The default retention and no listeners (a library caller).
    fn default() -> Self {
        AdminSettings {
            retired_retention: Duration::from_secs(
                u64::from(crate::config::DEFAULT_RETIRED_RETENTION_DAYS) * 86_400,
            ),
            listeners: Vec::new(),
            max_policy_bytes: crate::config::Limits::default().max_policy_bytes,
            max_description_bytes: crate::config::Limits::default().max_description_bytes,
        }
    }
}

impl AdminSettings {
    /// The retention and the configured listeners of `config` (the guest
    /// port as configured: [`Admin::set_listener`] replaces it with the
    /// bound address when the port was 0).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let mut listeners = vec![
            ListenerInfo {
                kind: "guest".into(),
                address: config.listen.to_string(),
            },
            ListenerInfo {
                kind: "admin-unix".into(),
                address: config.admin.socket.display().to_string(),
            },
        ];
        if let Some(tcp) = &config.admin.tcp {
            listeners.push(ListenerInfo {
                kind: "admin-tls".into(),
                address: tcp.listen.to_string(),
            });
        }
        if let Some(m) = config.metrics_listen {
            listeners.push(ListenerInfo {
                kind: "metrics".into(),
                address: m.to_string(),
            });
        }
        AdminSettings {
            retired_retention: config.retired_retention,
            listeners,
            max_policy_bytes: config.limits.max_policy_bytes,
            max_description_bytes: config.limits.max_description_bytes,
        }
    }
}
