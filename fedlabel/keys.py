"""Names of message records and metric keys exchanged between the ServerApp and ClientApp."""

ARRAYS = "arrays"  # global parameters, server -> client
CONFIG = "config"  # ConfigRecord, server -> client
METRICS = "metrics"  # MetricRecord, client -> server
DELTA_PREFIX = "delta."  # one ArrayRecord per named delta, client -> server
EXTRA_PREFIX = "extra."  # one ArrayRecord per named extra of Algorithm.client_payload, server -> client
STATS = "stats"  # MetricRecord of a client's data statistics (query reply)

ROUND = "round"
PARTITION_ID = "partition-id"  # node_config key in simulation and deployment
NUM_PARTITIONS = "num-partitions"
CLIENT_ID = "client-id"
WEIGHT = "weight"  # r_k

# DP-SGD ledger a client reports (one entry per private training loop of its update)
DP_NOISE_MULTIPLIERS = "dp-noise-multipliers"
DP_SAMPLE_RATES = "dp-sample-rates"
DP_STEPS = "dp-steps"
CLIPPED_PARAMS = "clipped-params"  # central DP, client-side clipping: w + clip(Delta), client -> server
