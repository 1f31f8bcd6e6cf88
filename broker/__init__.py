"""A local single-node Apache Kafka broker (KRaft) for the demo, the tests and CI."""
