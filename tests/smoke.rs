//! Smoke test of the local stack: one round trip through each real service, over real
//! connections, with the clients the services use. If this fails, nothing else can pass:
//! run `scripts/stack up` and read its output.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use statecast_testkit as kit;

#[tokio::test]
async fn postgres_round_trips_a_row() {
    let url = kit::fresh_database().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("create table smoke (id text primary key, value bigint not null)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("insert into smoke (id, value) values ($1, $2)")
        .bind("answer")
        .bind(42_i64)
        .execute(&pool)
        .await
        .unwrap();
    let value: i64 = sqlx::query_scalar("select value from smoke where id = $1")
        .bind("answer")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(value, 42);
}

#[tokio::test]
async fn redis_round_trips_a_key() {
    let client = redis::Client::open(kit::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = kit::unique("smoke");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("hello")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "hello");
}

#[tokio::test]
async fn broker_round_trips_a_keyed_record_with_a_header() {
    let brokers = kit::kafka_brokers();
    let topic = kit::unique("smoke");
    kit::create_topic(&brokers, &topic, 3).await.unwrap();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some("text/plain"),
    });
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("user-1")
                .payload("hello")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", kit::unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("no record within 30 s")
        .unwrap();
    assert_eq!(message.key(), Some(&b"user-1"[..]));
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    assert_eq!(
        (message.partition(), message.offset()),
        (delivery.partition, delivery.offset)
    );
    let header = message.headers().unwrap().get(0);
    assert_eq!(header.key, "content-type");
    assert_eq!(header.value, Some(&b"text/plain"[..]));
}
