//! Several portal instances on one database behind HAProxy, with an SMTP server: the setting of
//! the cluster tests.

use std::time::Duration;

use super::haproxy::HaProxy;
use super::http::Browser;
use super::portal::{cluster_env, secret_key, Portal, Workdir};
use super::smtp::SmtpServer;

pub struct Cluster {
    // Dropped in this order: the balancer, the instances, then the folder (kept on failure).
    pub haproxy: HaProxy,
    pub portals: Vec<Portal>,
    pub dir: Workdir,
    /// The PORTAL_SECRET_KEY every instance shares.
    pub secret_key: String,
}

impl Cluster {
    /// `n` instances (portal1, portal2, …) on `database_url`, mailing through `smtp`, each with
    /// `tweak` applied to its environment; started at the same moment and ready, then HAProxy.
    pub async fn start(
        tag: &str,
        database_url: &str,
        smtp: &SmtpServer,
        n: usize,
        tweak: impl Fn(&mut Vec<(String, String)>),
    ) -> Cluster {
        let dir = Workdir::new(tag);
        let https_port = super::free_port();
        let public_url = format!("https://127.0.0.1:{https_port}");
        let key = secret_key();
        let mut portals: Vec<Portal> = (1..=n)
            .map(|i| {
                let mut env = cluster_env(database_url, &public_url, &key, smtp.port);
                tweak(&mut env);
                Portal::new(&dir.path, &format!("portal{i}"), env)
            })
            .collect();
        for p in &mut portals {
            p.start();
        }
        for p in &mut portals {
            p.wait_ready(Duration::from_secs(60)).await;
        }
        let servers: Vec<(String, u16)> =
            portals.iter().map(|p| (p.name.clone(), p.port)).collect();
        let haproxy = HaProxy::start(&dir.path, https_port, &servers);
        for p in &portals {
            haproxy
                .wait_status(&p.name, "UP", Duration::from_secs(20))
                .await;
        }
        Cluster {
            haproxy,
            portals,
            dir,
            secret_key: key,
        }
    }

    /// A new browser (no cookies) on HAProxy's address.
    pub fn browser(&self) -> Browser {
        Browser::new(&self.haproxy.url(), &self.haproxy.ca)
    }

    pub fn portal(&mut self, name: &str) -> &mut Portal {
        self.portals
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no instance {name}"))
    }
}
