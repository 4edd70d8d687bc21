//! The platform Banter runs on, as far as its environment tells, and the defaults that follow
//! from it.
//!
//! Only Azure App Service is recognised. Its front end terminates TLS and opens its own
//! connections to the container, appending the browser's address to `X-Forwarded-For` (as
//! `address:port`). A process that does not trust the front end counts every browser as the front
//! end, and the per-address bounds then cap the whole site. So on App Service, and only while
//! `BANTER_TRUSTED_PROXIES` is not set at all, the front end's ranges are trusted by default. An
//! explicit setting, an empty one included, always wins.

use crate::config::net::{IpNet, TrustSource, TrustedProxies};

/// Set by App Service for every app, custom containers included; its reference of app settings
/// lists both as read-only ("App name", and "Unique ID of the current VM instance"). Both must be
/// present and non-empty: a wrong guess here would trust addresses that ordinary clients might
/// connect from, so one variable that happens to share a name is not enough.
const APP_SERVICE_MARKERS: [&str; 2] = ["WEBSITE_SITE_NAME", "WEBSITE_INSTANCE_ID"];

/// The networks App Service's front end connects to a container from.
///
/// Microsoft documents no exact list: its guide to forwarded headers on App Service says to trust
/// the private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16) and that "it's not possible to
/// narrow it down further". Linux containers have been seen receiving the front end's requests
/// from 169.254.129.1, a link-local address, hence 169.254.0.0/16. Loopback is added because only
/// processes inside the container (or a sidecar sharing its network) can connect from it, and
/// such a process is part of the deployment. None of these ranges can be reached from the
/// internet, so no browser can connect from them and pick the address it is counted under.
pub const APP_SERVICE_FRONT_END: [&str; 6] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "::1",
];

/// Where the process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platform {
    /// Azure App Service, with the app's name.
    AppService { site: String },
    /// Anywhere else, or somewhere not recognised.
    Other,
}

impl Platform {
    /// Recognises the platform from environment variables, read through `var` (the process's
    /// environment in production, a table in tests).
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Self {
        let [site, instance] = APP_SERVICE_MARKERS.map(|name| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        });
        match (site, instance) {
            (Some(site), Some(_)) => Self::AppService { site },
            _ => Self::Other,
        }
    }

    /// The platform of this process.
    pub fn current() -> Self {
        Self::detect(|name| std::env::var(name).ok())
    }

    /// The proxies to trust when `BANTER_TRUSTED_PROXIES` is not set.
    pub fn default_trusted_proxies(&self) -> TrustedProxies {
        match self {
            Self::AppService { .. } => TrustedProxies::from_source(
                APP_SERVICE_FRONT_END
                    .iter()
                    .filter_map(|net| net.parse::<IpNet>().ok())
                    .collect(),
                TrustSource::AppService,
            ),
            Self::Other => TrustedProxies::default(),
        }
    }
}

/// An environment of the given variables only, for tests of what reads the environment.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::test_env as env;
    use super::*;

    #[test]
    fn app_service_needs_both_of_its_variables() {
        let both = env(&[
            ("WEBSITE_SITE_NAME", "banter-chat"),
            ("WEBSITE_INSTANCE_ID", "0a1b2c"),
        ]);
        assert_eq!(
            Platform::detect(both),
            Platform::AppService {
                site: "banter-chat".into()
            }
        );
        for partial in [
            env(&[("WEBSITE_SITE_NAME", "banter-chat")]),
            env(&[("WEBSITE_INSTANCE_ID", "0a1b2c")]),
            env(&[
                ("WEBSITE_SITE_NAME", " "),
                ("WEBSITE_INSTANCE_ID", "0a1b2c"),
            ]),
            env(&[
                ("WEBSITE_SITE_NAME", "banter-chat"),
                ("WEBSITE_INSTANCE_ID", ""),
            ]),
            env(&[]),
        ] {
            assert_eq!(Platform::detect(partial), Platform::Other);
        }
    }

    #[test]
    fn the_app_service_default_covers_the_front_end_and_no_public_address() {
        let trusted = Platform::AppService { site: "x".into() }.default_trusted_proxies();
        assert_eq!(trusted.source(), TrustSource::AppService);
        assert_eq!(
            trusted.nets().len(),
            APP_SERVICE_FRONT_END.len(),
            "all parse"
        );
        for front_end in [
            "169.254.129.1",
            "10.0.4.7",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "127.0.0.1",
            "::1",
            "::ffff:169.254.129.1",
        ] {
            let ip: IpAddr = front_end.parse().unwrap();
            assert!(trusted.trusts(ip), "{front_end}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "20.105.224.19",
            "2001:db8::1",
            "11.0.0.1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(!trusted.trusts(ip), "{public}");
        }
        let elsewhere = Platform::Other.default_trusted_proxies();
        assert!(elsewhere.nets().is_empty());
        assert_eq!(elsewhere.source(), TrustSource::Unset);
    }
}
