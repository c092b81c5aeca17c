//! E-mail over SMTP with lettre: STARTTLS (required) or TLS from the first byte, optional
//! authentication, a plain-text and an HTML part with the same numbers. The `Message-ID` is
//! made from the notice's idempotency key, so a repeat is recognisable as the same message.

use crate::{Attempt, Notifier, NotifyError, Retry, Sent};
use lettre::message::{Mailbox, MultiPart, header};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use ramp_core::plan::SmtpTls;
use ramp_store::BoxFuture;
use std::time::Duration;

/// What an e-mail channel needs.
pub struct Settings {
    /// The server.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How the connection is protected.
    pub tls: SmtpTls,
    /// The sender.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// User and password.
    pub credentials: Option<(String, String)>,
}

/// An e-mail channel.
pub struct Email {
    name: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("name", &self.name)
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

impl Email {
    /// A channel sending through `s`; `Err` when lettre refuses the settings.
    pub fn new(name: String, s: Settings) -> Result<Self, String> {
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| format!("from {:?}: {e}", s.from))?;
        let to =
            s.to.iter()
                .map(|t| t.parse::<Mailbox>().map_err(|e| format!("to {t:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
        let builder = match s.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                .map_err(|e| format!("smtp {}: {e}", s.host))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host)
                .map_err(|e| format!("smtp {}: {e}", s.host))?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
        };
        let mut builder = builder.port(s.port).timeout(Some(Duration::from_secs(15)));
        if let Some((user, password)) = s.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Email {
            name,
            from,
            to,
            transport: builder.build(),
        })
    }

    fn message(&self, attempt: &Attempt<'_>) -> Result<Message, NotifyError> {
        let e = attempt.entry;
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(crate::message::subject(e))
            .message_id(Some(format!("<{}@ramp>", attempt.key())));
        for to in &self.to {
            m = m.to(to.clone());
        }
        if e.notice.kind == ramp_wire::v1::NotifyKind::Critical {
            m = m.header(Priority);
        }
        m.multipart(MultiPart::alternative_plain_html(
            crate::message::text(e),
            crate::message::html(e),
        ))
        .map_err(|err| NotifyError::never(format!("email {}: {err}", self.name)))
    }
}

/// `X-Priority: 1` on critical notices.
#[derive(Clone, Debug)]
struct Priority;

impl header::Header for Priority {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("X-Priority")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Priority)
    }

    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), "1".to_string())
    }
}

impl Notifier for Email {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<Sent, NotifyError>> {
        Box::pin(async move {
            let message = self.message(&attempt)?;
            match self.transport.send(message).await {
                Ok(_) => Ok(Sent::default()),
                Err(err) => Err(NotifyError {
                    error: format!("email {}: {err}", self.name),
                    retry: if err.is_permanent() {
                        Retry::Never
                    } else {
                        Retry::Later
                    },
                    thread: None,
                }),
            }
        })
    }
}
