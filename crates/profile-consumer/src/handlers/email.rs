//! `email`: a "your profile changed" mail per applied event, to the profile's address (for a
//! delete, whose event carries no address, to the last address seen for the user, kept in
//! `email_recipient`; with none known, nothing is sent and the event counts as processed).
//!
//! # Never two mails for one event (almost)
//! SMTP cannot join a database transaction, so the handler works in three steps:
//! 1. one transaction claims the event (`processed_event`), moves `applied_version` and reserves
//!    the mail in `email_outbox` with status `sending`;
//! 2. the mail is sent, with `Message-ID: <event-id@statecast>`;
//! 3. the outbox row is marked `sent`.
//!
//! A redelivered event whose row is `sent` is a duplicate; one whose row is still `sending`
//! (the send failed, or the process died in between) is sent again. That is the one unavoidable
//! window: a crash after the SMTP server accepted the mail and before step 3 commits yields a
//! second delivery — with the same Message-ID, which mail systems use to drop duplicates. The
//! opposite failure (a lost mail) cannot happen: the reservation is durable before sending.
//!
//! A batch (the records of one poll of a partition) does step 1 for all its events in one
//! transaction, then sends the reserved mails concurrently, one chain per user (a user's
//! mails go out in offset order), each marked `sent` as soon as the server accepted it. So the
//! window above stays one mail wide per connection in flight (at most
//! [`super::smtp::MAX_CONNECTIONS`] per replica); a failed send leaves its mail, and the
//! user's later ones, reserved, to be sent by the retry.

use std::collections::{BTreeMap, HashMap};

use lettre::Message;
use lettre::message::{Mailbox, header::ContentType};
use sqlx::{PgConnection, PgPool};
use statecast_events::{EventType, ProfileEvent};
use uuid::Uuid;

use super::smtp::Mailer;
use super::{Delivery, HandlerError, Outcome};
use crate::store::{self, VersionDecision};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (`smtp://`): local sinks and in-cluster relays.
    None,
    /// Plain connect, then `STARTTLS` before anything else; a server that does not offer it is
    /// refused (`smtp://...?tls=required`).
    StartTls,
    /// TLS from the first byte (`smtps://`, RFC 8314).
    Implicit,
}

/// Where and how to reach the SMTP server, from `SMTP_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// Host name or address (also the name the server's certificate must carry).
    pub host: String,
    /// Port: as given, else 25 (plain), 587 (STARTTLS) or 465 (implicit TLS).
    pub port: u16,
    /// User name and password, if the URL has them (not percent-decoded).
    pub credentials: Option<(String, String)>,
    /// Transport security.
    pub tls: SmtpTls,
}

impl SmtpSettings {
    /// Parses `smtp://[user:password@]host[:port][/][?tls=required]` or
    /// `smtps://[user:password@]host[:port][/]` (the URL forms lettre uses too). The error says
    /// what is wrong without repeating the URL (it may hold a password):
    /// `crate::config::smtp_settings` names `SMTP_URL` with its masked value.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (scheme_tls, rest) = if let Some(rest) = url.strip_prefix("smtp://") {
            (SmtpTls::None, rest)
        } else if let Some(rest) = url.strip_prefix("smtps://") {
            (SmtpTls::Implicit, rest)
        } else {
            return Err("it must start with smtp:// or smtps://".to_owned());
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let tls = match (scheme_tls, query) {
            (tls, "") => tls,
            (SmtpTls::None, "tls=required") => SmtpTls::StartTls,
            (_, query) => {
                return Err(format!(
                    "unsupported query {query:?}: only smtp://...?tls=required"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, host_port) = match rest.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_owned(), password.to_owned())), host_port)
            }
            None => (None, rest),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("{port:?} is not a port number"))?;
                (host, port)
            }
            _ => (
                host_port,
                match tls {
                    SmtpTls::None => 25,
                    SmtpTls::StartTls => 587,
                    SmtpTls::Implicit => 465,
                },
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err("it has no host".to_owned());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            credentials,
            tls,
        })
    }
}

/// The email handler.
#[derive(Debug, Clone)]
pub struct Email {
    pool: PgPool,
    mailer: Mailer,
    from: Mailbox,
}

impl Email {
    /// An email handler sending through `smtp` from `from`, de-duplicating in `pool` (migrated).
    /// `extra_roots` (PEM) are trusted for SMTP over TLS beside the bundled Mozilla roots.
    pub fn new(
        pool: PgPool,
        smtp: &SmtpSettings,
        extra_roots: Option<&[u8]>,
        from: &str,
    ) -> Result<Self, crate::Error> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| crate::Error::Config(format!("MAIL_FROM {from:?}: {e}")))?;
        Ok(Self {
            pool,
            mailer: Mailer::new(smtp.clone(), extra_roots)
                .map_err(|e| crate::Error::Config(format!("SMTP TLS: {e}")))?,
            from,
        })
    }

    /// Mails the user about `delivery` once (see the module docs for the one exception).
    #[tracing::instrument(name = "email", skip_all, fields(event.id = %delivery.event.id), err)]
    pub async fn handle(&self, delivery: Delivery<'_>) -> Result<Outcome, HandlerError> {
        let event = delivery.event;
        let mut tx = self.pool.begin().await?;
        if !store::claim_event(&mut tx, delivery.group, event.id).await? {
            let pending: Option<String> = sqlx::query_scalar(
                "select recipient from email_outbox \
                 where consumer_group = $1 and event_id = $2 and status = 'sending'",
            )
            .bind(delivery.group)
            .bind(event.id)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            return match pending {
                Some(recipient) => {
                    tracing::info!(%recipient, "resending a mail whose delivery was not confirmed");
                    self.send_and_mark(delivery, &recipient).await?;
                    Ok(Outcome::Processed)
                }
                None => Ok(Outcome::Duplicate),
            };
        }
        if store::advance_version(
            &mut tx,
            delivery.group,
            &event.subject,
            event.profileversion,
        )
        .await?
            == VersionDecision::Stale
        {
            tx.commit().await?;
            return Ok(Outcome::Stale);
        }
        let Some(recipient) = recipient(&mut tx, event).await? else {
            tracing::info!(user.id = %event.subject, "no known address: nothing to send");
            tx.commit().await?;
            return Ok(Outcome::Processed);
        };
        // Refuse a malformed address before reserving, so it is dead-lettered, not retried.
        recipient
            .parse::<Mailbox>()
            .map_err(|e| HandlerError::Rejected(format!("recipient {recipient:?}: {e}")))?;
        sqlx::query(
            "insert into email_outbox (consumer_group, event_id, recipient, message_id, status) \
             values ($1, $2, $3, $4, 'sending')",
        )
        .bind(delivery.group)
        .bind(event.id)
        .bind(&recipient)
        .bind(message_id(event.id))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.send_and_mark(delivery, &recipient).await?;
        Ok(Outcome::Processed)
    }

    /// Mails the users about a batch of deliveries (offset order): one transaction reserves
    /// every mail, then the mails go out (see the module docs).
    #[tracing::instrument(name = "email batch", skip_all, fields(events = deliveries.len()), err)]
    pub async fn handle_batch(
        &self,
        group: &str,
        deliveries: &[Delivery<'_>],
    ) -> Result<Vec<Outcome>, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let (decisions, book) = super::claim_and_decide(&mut tx, group, deliveries).await?;
        let repeated: Vec<Uuid> = deliveries
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.is_none())
            .map(|(d, _)| d.event.id)
            .collect();
        let mut pending = pending_mails(&mut tx, group, &repeated).await?;
        let applied: Vec<String> = deliveries
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| **d == Some(VersionDecision::Apply))
            .map(|(d, _)| d.event.subject.clone())
            .collect();
        let mut recipients = Recipients::load(&mut tx, &applied).await?;
        let mut outcomes = Vec::with_capacity(deliveries.len());
        // (delivery index, recipient) of every mail to send, in offset order.
        let mut mails: Vec<(usize, String)> = Vec::new();
        let mut reserved: Vec<(Uuid, String)> = Vec::new();
        for (i, (delivery, decision)) in deliveries.iter().zip(&decisions).enumerate() {
            let event = delivery.event;
            outcomes.push(match decision {
                // `remove`: a repeat of the id later in the batch is a plain duplicate.
                None => match pending.remove(&event.id) {
                    Some(recipient) => {
                        tracing::info!(%recipient, event.id = %event.id, "resending a mail whose delivery was not confirmed");
                        mails.push((i, recipient));
                        Outcome::Processed
                    }
                    None => Outcome::Duplicate,
                },
                Some(VersionDecision::Stale) => Outcome::Stale,
                Some(VersionDecision::Apply) => {
                    if let Some(recipient) = recipients.for_event(event) {
                        recipient.parse::<Mailbox>().map_err(|e| {
                            HandlerError::Rejected(format!("recipient {recipient:?}: {e}"))
                        })?;
                        reserved.push((event.id, recipient.clone()));
                        mails.push((i, recipient));
                    } else {
                        tracing::info!(user.id = %event.subject, "no known address: nothing to send");
                    }
                    Outcome::Processed
                }
            });
        }
        recipients.store(&mut tx).await?;
        reserve(&mut tx, group, &reserved).await?;
        super::store_batch_versions(&mut tx, group, &book).await?;
        tx.commit().await?;
        self.send_chains(deliveries, mails).await?;
        Ok(outcomes)
    }

    /// Sends `mails` (offset order), one chain per user, the chains concurrently; each mail is
    /// marked sent once accepted. The first failure in offset order is returned; a chain stops
    /// at its failure, so a user's later mails stay reserved for the retry.
    async fn send_chains(
        &self,
        deliveries: &[Delivery<'_>],
        mails: Vec<(usize, String)>,
    ) -> Result<(), HandlerError> {
        let mut chains: BTreeMap<&str, Vec<(usize, String)>> = BTreeMap::new();
        for (i, recipient) in mails {
            chains
                .entry(deliveries[i].event.subject.as_str())
                .or_default()
                .push((i, recipient));
        }
        let sends = chains.into_values().map(|chain| async move {
            for (i, recipient) in chain {
                self.send_and_mark(deliveries[i], &recipient)
                    .await
                    .map_err(|e| (i, e))?;
            }
            Ok::<(), (usize, HandlerError)>(())
        });
        let failed = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter_map(Result::err)
            .min_by_key(|(i, _)| *i);
        match failed {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }

    async fn send_and_mark(
        &self,
        delivery: Delivery<'_>,
        recipient: &str,
    ) -> Result<(), HandlerError> {
        let message = compose(&self.from, recipient, delivery.event)?;
        self.send(message).await?;
        sqlx::query(
            "update email_outbox set status = 'sent', sent_at = now() \
             where consumer_group = $1 and event_id = $2",
        )
        .bind(delivery.group)
        .bind(delivery.event.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(name = "smtp send", skip_all, err)]
    async fn send(&self, message: Message) -> Result<(), HandlerError> {
        self.mailer.send(&message).await
    }
}

/// The recipients of the mails reserved but not confirmed sent, among `events`.
async fn pending_mails(
    tx: &mut PgConnection,
    group: &str,
    events: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    if events.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "select event_id, recipient from email_outbox \
         where consumer_group = $1 and event_id = any($2) and status = 'sending'",
    )
    .bind(group)
    .bind(events)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Reserves a batch's mails (`sending`) in one statement.
async fn reserve(
    tx: &mut PgConnection,
    group: &str,
    mails: &[(Uuid, String)],
) -> Result<(), sqlx::Error> {
    if mails.is_empty() {
        return Ok(());
    }
    let (ids, recipients): (Vec<Uuid>, Vec<&str>) =
        mails.iter().map(|(id, r)| (*id, r.as_str())).unzip();
    let message_ids: Vec<String> = ids.iter().map(|id| message_id(*id)).collect();
    sqlx::query(
        "insert into email_outbox (consumer_group, event_id, recipient, message_id, status) \
         select $1, e, r, m, 'sending' from unnest($2::uuid[], $3::text[], $4::text[]) as t(e, r, m)",
    )
    .bind(group)
    .bind(&ids)
    .bind(&recipients)
    .bind(&message_ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The last address seen per user (`email_recipient`) as a batch folds it, in offset order:
/// an event with an address newer than the one known replaces it; a delete (or an event
/// without an address) is mailed to the one known.
struct Recipients {
    known: HashMap<String, (String, i64)>,
    changed: BTreeMap<String, (String, i64)>,
}

impl Recipients {
    async fn load(tx: &mut PgConnection, users: &[String]) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String, i64)> = if users.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "select user_id, email, version from email_recipient where user_id = any($1)",
            )
            .bind(users)
            .fetch_all(&mut *tx)
            .await?
        };
        Ok(Self {
            known: rows.into_iter().map(|(u, e, v)| (u, (e, v))).collect(),
            changed: BTreeMap::new(),
        })
    }

    /// The address to mail about `event` (whose version applies), remembering its own.
    fn for_event(&mut self, event: &ProfileEvent) -> Option<String> {
        match (&event.event_type, &event.data.email) {
            (EventType::UserDeleted, _) | (_, None) => self
                .known
                .get(&event.subject)
                .map(|(email, _)| email.clone()),
            (_, Some(email)) => {
                let newer = self
                    .known
                    .get(&event.subject)
                    .is_none_or(|(_, version)| *version < event.profileversion);
                if newer {
                    let entry = (email.clone(), event.profileversion);
                    self.known.insert(event.subject.clone(), entry.clone());
                    self.changed.insert(event.subject.clone(), entry);
                }
                Some(email.clone())
            }
        }
    }

    /// Writes the addresses that changed, with the single event's version guard.
    async fn store(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let mut users = Vec::with_capacity(self.changed.len());
        let mut emails = Vec::with_capacity(self.changed.len());
        let mut versions = Vec::with_capacity(self.changed.len());
        for (user, (email, version)) in &self.changed {
            users.push(user.as_str());
            emails.push(email.as_str());
            versions.push(*version);
        }
        sqlx::query(
            "insert into email_recipient (user_id, email, version) \
             select u, e, v from unnest($1::text[], $2::text[], $3::bigint[]) as t(u, e, v) \
             on conflict (user_id) do update set email = excluded.email, version = excluded.version \
             where email_recipient.version < excluded.version",
        )
        .bind(&users)
        .bind(&emails)
        .bind(&versions)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// The address to mail about `event`, remembering it for a later deletion notice.
#[tracing::instrument(skip_all, err)]
async fn recipient(
    tx: &mut PgConnection,
    event: &ProfileEvent,
) -> Result<Option<String>, sqlx::Error> {
    match (&event.event_type, &event.data.email) {
        (EventType::UserDeleted, _) | (_, None) => {
            sqlx::query_scalar("select email from email_recipient where user_id = $1")
                .bind(&event.subject)
                .fetch_optional(&mut *tx)
                .await
        }
        (_, Some(email)) => {
            sqlx::query(
                "insert into email_recipient (user_id, email, version) values ($1, $2, $3) \
                 on conflict (user_id) do update set email = excluded.email, version = excluded.version \
                 where email_recipient.version < excluded.version",
            )
            .bind(&event.subject)
            .bind(email)
            .bind(event.profileversion)
            .execute(&mut *tx)
            .await?;
            Ok(Some(email.clone()))
        }
    }
}

/// `<event-id@statecast>`: the same for every delivery attempt of one event.
pub fn message_id(event_id: Uuid) -> String {
    format!("<{event_id}@statecast>")
}

/// The mail about `event`.
pub fn compose(from: &Mailbox, to: &str, event: &ProfileEvent) -> Result<Message, HandlerError> {
    let to: Mailbox = to
        .parse()
        .map_err(|e| HandlerError::Rejected(format!("recipient {to:?}: {e}")))?;
    let (subject, what) = match event.event_type {
        EventType::UserCreated => ("Welcome to Statecast", "was created"),
        EventType::UserUpdated => ("Your Statecast profile changed", "was changed"),
        EventType::UserDeleted => ("Your Statecast profile was deleted", "was deleted"),
    };
    let name = event.data.name.as_deref().unwrap_or(&event.subject);
    let body = format!(
        "Hello {name},\n\nyour Statecast profile {what} at {} (version {}).\n\n\
         If this was not you, please contact support.\n",
        event.time.to_rfc3339(),
        event.profileversion,
    );
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(message_id(event.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| HandlerError::Rejected(format!("cannot build the mail: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_give_host_port_and_credentials() {
        assert_eq!(
            SmtpSettings::parse("smtp://127.0.0.1:2525").unwrap(),
            SmtpSettings {
                host: "127.0.0.1".into(),
                port: 2525,
                credentials: None,
                tls: SmtpTls::None,
            }
        );
        let starttls = SmtpSettings::parse("smtp://u:p@mail.example.com?tls=required").unwrap();
        assert_eq!((starttls.port, starttls.tls), (587, SmtpTls::StartTls));
        assert_eq!(starttls.host, "mail.example.com");
        let implicit = SmtpSettings::parse("smtps://mail.example.com/").unwrap();
        assert_eq!((implicit.port, implicit.tls), (465, SmtpTls::Implicit));
        let custom = SmtpSettings::parse("smtps://mail.example.com:2465").unwrap();
        assert_eq!(custom.port, 2465);
        assert_eq!(SmtpSettings::parse("smtp://mail.local/").unwrap().port, 25);
        let with_user = SmtpSettings::parse("smtp://bob:s3cret@relay:587").unwrap();
        assert_eq!(with_user.host, "relay");
        assert_eq!(with_user.port, 587);
        assert_eq!(with_user.credentials, Some(("bob".into(), "s3cret".into())));
        assert_eq!(SmtpSettings::parse("smtp://[::1]:25").unwrap().host, "::1");
    }

    #[test]
    fn unsupported_or_broken_smtp_urls_are_refused() {
        assert!(SmtpSettings::parse("http://relay").is_err());
        assert!(SmtpSettings::parse("smtp://relay?tls=opportunistic").is_err());
        assert!(SmtpSettings::parse("smtps://relay?tls=required").is_err());
        assert!(SmtpSettings::parse("smtp://relay:notaport").is_err());
        assert!(SmtpSettings::parse("smtp://").is_err());
    }

    #[test]
    fn the_message_id_is_derived_from_the_event_id() {
        let id = Uuid::now_v7();
        let from: Mailbox = crate::config::DEFAULT_MAIL_FROM.parse().unwrap();
        let event = ProfileEvent::new(
            EventType::UserUpdated,
            statecast_events::ProfileSnapshot {
                id: "u".into(),
                name: Some("U".into()),
                email: Some("u@example.com".into()),
                country: None,
                version: 2,
                updated_at: None,
            },
            chrono::Utc::now(),
        );
        let message = compose(&from, "u@example.com", &event).unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(
            text.contains(&format!("Message-ID: <{}@statecast>", event.id)),
            "{text}"
        );
        assert_eq!(message_id(id), format!("<{id}@statecast>"));
    }
}
