//! The same event delivered twice has one effect in every handler.

use profile_consumer::HandlerKind;
use statecast_events::EventType;

use crate::support::{self, Running};

#[tokio::test]
async fn the_same_event_produced_twice_has_one_audit_row_one_mail_and_counts_once() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("dedup", 1).await;
    let address = format!("{}@example.com", statecast_testkit::unique("dedup"));
    let event = support::event(EventType::UserCreated, "dedup-user", 1, &address, "PT");
    let producer = support::producer();
    support::produce(&producer, &topic, &event).await;
    support::produce(&producer, &topic, &event).await;

    let audit = Running::start(support::config(&topic, HandlerKind::Audit, Some(&db)));
    let analytics = Running::start(support::config(&topic, HandlerKind::Analytics, Some(&db)));
    let mut email_config = support::config(&topic, HandlerKind::Email, Some(&db));
    email_config.smtp_url = Some(statecast_testkit::smtp_url());
    let email = Running::start(email_config);

    for consumer in [&audit, &analytics, &email] {
        consumer.wait_records("duplicate", 1.0).await;
        assert_eq!(consumer.records("processed").await, 1.0);
    }

    let pool = support::pool(&db).await;
    assert_eq!(
        support::count(&pool, "select count(*) from audit_log").await,
        1
    );
    assert_eq!(
        support::count(
            &pool,
            "select profiles from analytics_country where country = 'PT'"
        )
        .await,
        1
    );
    assert_eq!(
        support::count(
            &pool,
            "select sum(changes)::bigint from analytics_daily_changes"
        )
        .await,
        1
    );
    assert_eq!(
        support::count(
            &pool,
            "select count(*) from email_outbox where status = 'sent'"
        )
        .await,
        1
    );
    let message_id = format!("Message-ID: <{}@statecast>", event.id);
    assert_eq!(
        support::mails_containing(&message_id),
        1,
        "one mail with {message_id}"
    );
    assert_eq!(
        support::mails_containing(&address),
        1,
        "one mail to {address}"
    );

    for consumer in [audit, analytics, email] {
        consumer.stop().await;
    }
}

#[tokio::test]
async fn a_deletion_notice_goes_to_the_last_known_address() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("farewell", 1).await;
    let user = statecast_testkit::unique("farewell");
    let old = format!("{user}-old@example.com");
    let new = format!("{user}-new@example.com");
    let producer = support::producer();
    support::produce(
        &producer,
        &topic,
        &support::event(EventType::UserCreated, &user, 1, &old, "PT"),
    )
    .await;
    support::produce(
        &producer,
        &topic,
        &support::event(EventType::UserUpdated, &user, 2, &new, "PT"),
    )
    .await;
    let delete = support::event(EventType::UserDeleted, &user, 3, "", "");
    support::produce(&producer, &topic, &delete).await;

    let mut config = support::config(&topic, HandlerKind::Email, Some(&db));
    config.smtp_url = Some(statecast_testkit::smtp_url());
    let email = Running::start(config);
    email.wait_records("processed", 3.0).await;
    assert_eq!(support::mails_containing(&old), 1);
    assert_eq!(
        support::mails_containing(&new),
        2,
        "update and deletion notice"
    );
    assert_eq!(
        support::mails_containing(&format!("Message-ID: <{}@statecast>", delete.id)),
        1
    );
    email.stop().await;
}
