-- The failures topic in ClickHouse: a Kafka engine table reads the Confluent wire format, a materialized
-- view moves each record into a MergeTree table. Columns are matched to the Avro fields by name; fields
-- left out (here the raw `payload`) are skipped, so the reader is unaffected by fields a later schema adds.
-- ${BOOTSTRAP}, ${TOPIC} and ${REGISTRY_URL} as for the Flink script (e.g. `envsubst`).
CREATE TABLE edns_failures_queue
(
    time_sec Int64,
    time_nsec Int32,
    name_server String,
    resolver String,
    qname String,
    qtype Int32,
    rcode Int32,
    kind String,
    query_edns_udp_size Int32,
    query_edns_do Bool
)
ENGINE = Kafka
SETTINGS kafka_broker_list = '${BOOTSTRAP}',
         kafka_topic_list = '${TOPIC}',
         kafka_group_name = 'clickhouse-edns-failures',
         kafka_format = 'AvroConfluent',
         format_avro_schema_registry_url = '${REGISTRY_URL}';

CREATE TABLE edns_failures
(
    time DateTime64(9) MATERIALIZED fromUnixTimestamp64Nano(time_sec * 1000000000 + time_nsec),
    time_sec Int64,
    time_nsec Int32,
    name_server String,
    resolver String,
    qname String,
    qtype Int32,
    rcode Int32,
    kind LowCardinality(String),
    query_edns_udp_size Int32,
    query_edns_do Bool
)
ENGINE = MergeTree
ORDER BY (name_server, time_sec);

CREATE MATERIALIZED VIEW edns_failures_mv TO edns_failures AS
SELECT * FROM edns_failures_queue;

-- name servers by failures
SELECT name_server, count() AS failures
FROM edns_failures
GROUP BY name_server
ORDER BY failures DESC, name_server;
