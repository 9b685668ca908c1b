"""Names of message records and metric keys exchanged between the ServerApp and ClientApp."""

ARRAYS = "arrays"  # global parameters, server -> client
CONFIG = "config"  # ConfigRecord, server -> client
METRICS = "metrics"  # MetricRecord, client -> server
DELTA_PREFIX = "delta."  # one ArrayRecord per named delta, client -> server
EXTRA_PREFIX = (  # one ArrayRecord per named extra of Algorithm.client_payload, server -> client
    "extra."
)
STATS = "stats"  # MetricRecord of a client's data statistics (query reply)

ROUND = "round"
PARTITION_ID = "partition-id"  # node_config key in simulation and deployment
NUM_PARTITIONS = "num-partitions"
CLIENT_ID = "client-id"
WEIGHT = "weight"  # r_k

# Deployment: a SuperNode's node_config names its site; the server tells clients the model's input.
SITE_DIR = "site-dir"  # node_config: the site's data directory (see fedlabel.data.site)
SITE_ID = "site-id"  # node_config: the site's name (default: the site directory's name)
SITE = "site"  # ConfigRecord of a site's name (query reply, deployment only)
IN_CHANNELS = "in-channels"
IMAGE_SIZE = "image-size"
NUM_CLASSES = "num-classes"
# DP-SGD ledger a client reports (one entry per private training loop of its update)
DP_NOISE_MULTIPLIERS = "dp-noise-multipliers"
DP_SAMPLE_RATES = "dp-sample-rates"
DP_STEPS = "dp-steps"
CLIPPED_PARAMS = (  # central DP, client-side clipping: w + clip(Delta), client -> server
    "clipped-params"
)
