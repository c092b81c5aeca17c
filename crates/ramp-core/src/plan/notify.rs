//! The communication plan's audience: channels (how a notice leaves), stakeholder groups (who
//! hears what), and the routing of a notice's topic to the channels that carry it.
//!
//! Routing is a decision, so it lives here: the shell asks [`Notify::route`] which channels a
//! notice goes to and writes one delivery per channel with the notice, in the step's
//! transaction.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// What a notice is about, for routing: each stakeholder group receives a set of topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Needs attention now: a rollback, a hold, a failed gate, a backend down, a forced
    /// promotion, an approval needed.
    Critical,
    /// Every PCI compliance or security alert, the moment it arrives.
    Security,
    /// Phase changes: a phase started, was extended, the rollout completed, a backend recovered.
    Phase,
    /// The scheduled status update (`status_every`).
    Status,
    /// The scheduled summary (`daily_summary` / `summary_every`).
    Daily,
    /// The final report, when the rollout completed or rolled back.
    Final,
    /// The incident review, after a rollback.
    Incident,
}

impl Topic {
    /// Every topic, in the order they are documented.
    pub const ALL: [Topic; 7] = [
        Topic::Critical,
        Topic::Security,
        Topic::Phase,
        Topic::Status,
        Topic::Daily,
        Topic::Final,
        Topic::Incident,
    ];

    /// What a group receives when its `receives` is not given: everything that needs a person
    /// or changes what users get, and the documents at the end; scheduled reports only for the
    /// groups that ask for them.
    pub const DEFAULT: [Topic; 4] = [Topic::Critical, Topic::Phase, Topic::Final, Topic::Incident];

    /// The name used in plans and on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Topic::Critical => "critical",
            Topic::Security => "security",
            Topic::Phase => "phase",
            Topic::Status => "status",
            Topic::Daily => "daily",
            Topic::Final => "final",
            Topic::Incident => "incident",
        }
    }

    /// The topic a plan names.
    pub fn parse(s: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// Where a secret comes from: never the plan text itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Secret {
    /// An environment variable of the server's process.
    Env(String),
    /// A file (its content, trailing newline removed).
    File(String),
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Env(v) => write!(f, "environment variable {v}"),
            Secret::File(p) => write!(f, "file {p}"),
        }
    }
}

/// How an SMTP connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain TCP upgraded with STARTTLS, which must succeed (`smtp://`, port 587).
    Starttls,
    /// TLS from the first byte (`smtps://`, port 465).
    Tls,
    /// No TLS at all (`tls = "none"`: a relay on the same host only).
    None,
}

/// One way notices leave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelKind {
    /// A JSON POST, signed with HMAC-SHA256 when a secret is given.
    Webhook {
        /// Where to POST.
        url: String,
        /// The signing key.
        secret: Option<Secret>,
    },
    /// Slack: an incoming webhook, or a bot token with a channel (one thread per rollout).
    Slack {
        /// The incoming webhook's URL (a secret: it is the credential).
        webhook_url: Option<Secret>,
        /// A bot token (`xoxb-…`).
        token: Option<Secret>,
        /// The channel a bot posts to.
        channel: Option<String>,
        /// Slack's Web API base URL.
        api: String,
    },
    /// E-mail over SMTP: plain text and HTML.
    Email {
        /// The server's host.
        host: String,
        /// Its port.
        port: u16,
        /// How the connection is protected.
        tls: SmtpTls,
        /// The sender.
        from: String,
        /// The recipients.
        to: Vec<String>,
        /// The user to authenticate as.
        username: Option<String>,
        /// Its password.
        password: Option<Secret>,
    },
    /// PagerDuty Events API v2: an incident triggered on critical notices (one dedup key per
    /// rollout), resolved when the rollout is settled.
    Pagerduty {
        /// The integration's routing key.
        routing_key: Secret,
        /// The Events API URL.
        url: String,
    },
}

impl ChannelKind {
    /// `webhook`, `slack`, `email` or `pagerduty`.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Email { .. } => "email",
            ChannelKind::Pagerduty { .. } => "pagerduty",
        }
    }

    /// Every secret the channel needs, with the key that names it.
    pub fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        let mut out = Vec::new();
        match self {
            ChannelKind::Webhook { secret, .. } => out.extend(secret.iter().map(|s| ("secret", s))),
            ChannelKind::Slack {
                webhook_url, token, ..
            } => {
                out.extend(webhook_url.iter().map(|s| ("webhook_url", s)));
                out.extend(token.iter().map(|s| ("token", s)));
            }
            ChannelKind::Email { password, .. } => {
                out.extend(password.iter().map(|s| ("password", s)))
            }
            ChannelKind::Pagerduty { routing_key, .. } => out.push(("routing_key", routing_key)),
        }
        out
    }
}

/// A named channel (`[notify.channel.NAME]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Its name, as groups refer to it.
    pub name: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: ChannelKind,
}

/// A stakeholder group (`[notify.group.NAME]`): the channels that reach it and what it receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its name (`support`, `security`, ...).
    pub name: String,
    /// The channels that reach it, by name.
    pub channels: Vec<String>,
    /// The topics it receives.
    pub receives: Vec<Topic>,
}

/// Who a notice goes to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The groups that receive it, in name order.
    pub groups: Vec<String>,
    /// The channels that carry it, each once, in name order.
    pub channels: Vec<String>,
}

/// How long a notice is retried before it is marked failed, unless the plan says otherwise.
pub const DEFAULT_GIVE_UP_AFTER: Millis = 24 * crate::time::HOUR;

/// Reserved channel name: the live log every notice goes to.
pub const LOG_CHANNEL: &str = "log";

impl super::Notify {
    /// The groups and channels a notice of `topic` goes to.
    pub fn route(&self, topic: Topic) -> Route {
        let mut route = Route::default();
        for g in self.groups.iter().filter(|g| g.receives.contains(&topic)) {
            route.groups.push(g.name.clone());
            for c in &g.channels {
                if !route.channels.contains(c) {
                    route.channels.push(c.clone());
                }
            }
        }
        let order = |c: &String| self.channels.iter().position(|k| &k.name == c);
        route.channels.sort_by_key(order);
        route
    }

    /// The channel named `name`.
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_plan;

    fn plan(notify: &str) -> crate::plan::Plan {
        let src = format!(
            "name = \"n\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\n{notify}"
        );
        parse_plan(&src, "p.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_topic_goes_to_every_group_that_receives_it_each_channel_once() {
        let p = plan(
            r#"
[notify.channel.hook]
kind = "webhook"
url = "https://hooks.example/ramp"
[notify.channel.mail]
kind = "email"
smtp = "smtp://mail.example:587"
from = "ramp@example.com"
to = ["sec@example.com"]
[notify.group.security]
channels = ["mail", "hook"]
receives = ["critical", "security"]
[notify.group.support]
channels = ["hook"]
"#,
        );
        let r = p.notify.route(Topic::Critical);
        assert_eq!(r.groups, ["security", "support"]);
        assert_eq!(r.channels, ["hook", "mail"], "plan order, once each");
        let r = p.notify.route(Topic::Security);
        assert_eq!(r.groups, ["security"]);
        assert_eq!(r.channels, ["hook", "mail"]);
        assert!(p.notify.route(Topic::Daily).channels.is_empty());
        assert_eq!(
            p.notify.route(Topic::Phase).groups,
            ["support"],
            "the default"
        );
    }

    fn errors(notify: &str) -> String {
        let src = format!(
            "name = \"n\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\n{notify}"
        );
        parse_plan(&src, "p.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_secret_written_into_the_plan_is_refused_with_its_position() {
        let e = errors(
            "[notify.channel.hook]\nkind = \"webhook\"\nurl = \"https://h.example/x\"\nsecret = \"hunter2\"\n",
        );
        assert!(e.contains("p.toml:9:10: error: notify.channel.hook.secret: a secret never goes in the plan itself"), "{e}");
        assert!(e.contains("{ env = \"VARIABLE\" }"), "{e}");
    }

    #[test]
    fn groups_name_channels_and_topics_that_exist() {
        let e = errors(
            "[notify.channel.ops-hook]\nkind = \"webhook\"\nurl = \"https://h.example/x\"\n[notify.group.ops]\nchannels = [\"ops-hok\"]\nreceives = [\"critcal\"]\n",
        );
        assert!(e.contains("no channel named \"ops-hok\""), "{e}");
        assert!(e.contains("did you mean `ops-hook`?"), "{e}");
        assert!(e.contains("unknown topic \"critcal\""), "{e}");
        assert!(e.contains("did you mean `critical`?"), "{e}");
    }

    #[test]
    fn channels_are_checked_kind_by_kind() {
        let e = errors("[notify.channel.x]\nkind = \"sms\"\n");
        assert!(e.contains("unknown channel kind \"sms\""), "{e}");
        let e = errors("[notify.channel.s]\nkind = \"slack\"\ntoken = { env = \"T\" }\n");
        assert!(e.contains("a bot `token` needs the `channel`"), "{e}");
        let e = errors(
            "[notify.channel.m]\nkind = \"email\"\nsmtp = \"imap://x\"\nfrom = \"a@b.c\"\nto = [\"not-an-address\"]\n",
        );
        assert!(e.contains("is not smtp://host[:port]"), "{e}");
        let e = errors(
            "[notify.channel.m]\nkind = \"email\"\nsmtp = \"smtp://x.example\"\nfrom = \"a@b.c\"\nto = [\"not-an-address\"]\n",
        );
        assert!(
            e.contains("\"not-an-address\" is not an e-mail address"),
            "{e}"
        );
        let e = errors(
            "[notify.channel.m]\nkind = \"email\"\nsmtp = \"smtp://mail.example\"\ntls = \"none\"\nfrom = \"a@b.c\"\nto = [\"s@b.c\"]\nusername = \"u\"\npassword = { env = \"P\" }\n",
        );
        assert!(e.contains("would send the password in the clear"), "{e}");
        let e = errors("[notify.channel.log]\nkind = \"webhook\"\nurl = \"https://h.example\"\n");
        assert!(e.contains("`log` is the live log's"), "{e}");
    }

    #[test]
    fn smtp_urls_give_host_port_and_protection() {
        let p = plan(
            "[notify.channel.m]\nkind = \"email\"\nsmtp = \"smtps://mail.example\"\nfrom = \"ramp <r@x.example>\"\nto = \"s@x.example\"\nusername = \"u\"\npassword = { file = \"/p\" }\n",
        );
        match &p.notify.channels[0].kind {
            ChannelKind::Email {
                host,
                port,
                tls,
                to,
                ..
            } => {
                assert_eq!(
                    (host.as_str(), *port, *tls),
                    ("mail.example", 465, SmtpTls::Tls)
                );
                assert_eq!(to, &["s@x.example"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.notify.channels[0].kind.secrets().len(), 1);
    }
}
