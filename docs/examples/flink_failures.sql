-- EDNS0 failures per name server, with Flink SQL straight from the failures topic: no code of ours.
-- The values are in the Confluent wire format (magic byte 0, 4-byte schema id, Avro binary); the writer
-- schema (schemas/edns_failure.avsc) is fetched by id from the Schema Registry, the reader schema is the
-- table below. Replace the three placeholders (BOOTSTRAP, TOPIC, REGISTRY_URL; envsubst does it), then
-- run it with `sql-client.sh -f` given flink-sql-connector-kafka and flink-sql-avro-confluent-registry.
-- Bounded: it reads what the topic holds when the job starts and ends. For a live count, drop the SET
-- line and 'scan.bounded.mode'.
SET 'execution.runtime-mode' = 'batch';

CREATE TABLE edns_failures (
  time_sec BIGINT NOT NULL,
  time_nsec INT NOT NULL,
  name_server STRING NOT NULL,
  resolver STRING NOT NULL,
  query_port INT NOT NULL,
  response_port INT NOT NULL,
  proto INT NOT NULL,
  qname STRING NOT NULL,
  qtype INT NOT NULL,
  qclass INT NOT NULL,
  rcode INT NOT NULL,
  kind STRING NOT NULL,
  query_edns_udp_size INT NOT NULL,
  query_edns_version INT NOT NULL,
  query_edns_do BOOLEAN NOT NULL,
  payload BYTES NOT NULL,
  source BIGINT NOT NULL
) WITH (
  'connector' = 'kafka',
  'topic' = '${TOPIC}',
  'properties.bootstrap.servers' = '${BOOTSTRAP}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset',
  'format' = 'avro-confluent',
  'avro-confluent.url' = '${REGISTRY_URL}'
);

SELECT name_server, COUNT(*) AS failures
FROM edns_failures
GROUP BY name_server
ORDER BY failures DESC, name_server;
