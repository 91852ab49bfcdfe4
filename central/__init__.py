"""edgeward central: node streams, exactly-once usage ingest, decisions."""
