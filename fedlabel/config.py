"""One typed configuration schema for the Hydra CLI and Flower's flat run_config.

The dataclasses below hold every default. Hydra composes them (they are registered as config
groups by :func:`fedlabel.cli.register_configs`), and Flower's run_config is the same tree
flattened with dots: ``data.num_clients`` in Hydra is the run_config key ``data.num_clients``.
The algorithm's settings shared by every algorithm (``COMMON_KEYS``: lr, batch_size, ...) keep
their names; its own sit under its name, so that each name carries its own defaults:
``algorithm.beta`` of ``algorithm=fedlabel`` is the run_config key ``algorithm.fedlabel.beta``
(:func:`to_run_config`). Values that Flower cannot carry (None, lists) are not used in the schema.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any

from fedlabel.algorithms import ALGORITHMS, AlgorithmParams
from fedlabel.errors import ConfigError, check

GRAD_SAMPLE_MODES = (
    "bk",
    "ew",
    "hooks",
    "functorch",
)  # privacy.grad_sample_mode (privacy/dpsgd.py)


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split across clients."""

    name: str = "fashion_mnist"  # fashion_mnist | npz
    root: str = ""  # directory (fashion_mnist) or .npz file (npz); "" = search defaults
    cache_dir: str = "~/.cache/fedlabel"  # where downloads land
    download: bool = True  # allow downloading Fashion-MNIST into cache_dir
    num_clients: int = 100
    train_samples: int = 0  # >0: use a seeded random subset of this many training samples
    # Share of the training samples (after train_samples) held out of every client, seeded and
    # class-stratified, as the server's validation set (val_accuracy / val_loss); the paper's 5%.
    # 0 = none.
    val_fraction: float = 0.05
    # >0: evaluate on a seeded, class-stratified subset of this many test images (quick runs and
    # tests; the reported accuracy is then that subset's); 0 = the whole test set.
    test_samples: int = 0
    partition: str = "dirichlet"  # iid | dirichlet
    alpha: float = 0.1  # Dirichlet concentration over classes (smaller = more skew)
    min_client_size: int = 10  # redraw the Dirichlet split until every client has this many
    label_ratio: float = 0.05  # share of each client's samples that keep their labels
    # 0 = labeled part drawn uniformly inside each client (the paper). >0 = the labeled part
    # follows its own Dirichlet(labeled_class_alpha) class mix, so labeled and unlabeled
    # class distributions differ (label/unlabel mismatch).
    labeled_class_alpha: float = 0.0
    # Learning from label proportions (docs/privacy.md): bag_size > 0 turns each client's labeled
    # part into random bags of that size that keep only class counts; bag_key (npz only) names an
    # array with a bag id per training sample instead. Both unset = instance labels.
    bag_size: int = 0
    bag_key: str = ""
    llp_method: str = "dllp"  # dllp (proportion loss) | bp (belief-propagation pseudo-labels)
    proportion_epsilon: float = 0.0  # > 0: label-DP noise on each bag's counts; 0 = exact counts
    proportion_noise: str = (
        "laplace"  # laplace (pure epsilon) | gaussian (epsilon, proportion_delta)
    )
    proportion_delta: float = 1e-5
    bp_neighbors: int = 5  # kNN edges per instance
    bp_lambda_similarity: float = 10.0
    bp_lambda_bag: float = 10.0
    bp_iterations: int = 100
    bp_damping: float = 0.5
    bp_bag_loss_weight: float = 0.0  # > 0: add this times the DLLP loss to the pseudo-label loss


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"  # cnn | resnet18 (both GroupNorm)
    activation: str = "relu"  # relu | tanh (bounded activations help DP-SGD)


ENGINES = ("flower", "inprocess", "vectorized")


@dataclass(frozen=True)
class EngineConfig:
    name: str = "flower"  # flower | inprocess | vectorized
    # Flower simulation engine (Ray backend) resources per client. num_gpus may be fractional
    # so that several clients share one GPU; it must be 0 on a machine without a GPU.
    num_cpus_per_client: int = 1
    num_gpus_per_client: float = 0.0
    superlink_port: int = 0  # 0 = pick a free port on 127.0.0.1
    # A running Ray cluster for Flower's simulation runtime to join ("host:port" of its head, or
    # "auto" for the cluster this machine is part of); "" = Flower starts its own local Ray.
    ray_address: str = ""
    # engine=vectorized: clients trained together in one batched computation (0 = as many as
    # fit in about half of the free device memory, estimated from the model and batch size).
    chunk_clients: int = 0
    # engine=inprocess: worker processes, each with a resident model, reading client data from
    # shared memory; 1 = train in the main process.
    workers: int = 1


@dataclass(frozen=True)
class FaultsConfig:
    """Injected client faults (simulation only) and the server's tolerance rules (every runtime).

    Each sampled client's fault is drawn from (seed, round, client id): with crash_prob it raises
    during training, with dropout_prob it never replies, with straggler_prob it replies after
    round_deadline_s. round_deadline_s, min_clients and max_update_norm also apply in deployment.
    """

    crash_prob: float = 0.0
    dropout_prob: float = 0.0
    straggler_prob: float = 0.0
    round_deadline_s: float = (
        0.0  # the server waits this long for replies; 0 = wait for every reply
    )
    # Fewer accepted updates than this fails the round, and with it the run (status "failed", the
    # last checkpoint kept, so `resume=true` continues from there).
    min_clients: int = 1
    # Updates whose L2 norm (over all their deltas) exceeds this are rejected; 0 = no bound. The
    # default only catches absurd updates (a normal round's delta has norm of order 1).
    max_update_norm: float = 1.0e4
    # A dishonest site, simulated by the in-process engines (fedlabel/faults.py, tamper): client
    # attack_client sends, every round it is sampled, its honest update changed by `attack`:
    # scale (deltas x attack_scale), norm (deltas rescaled to attack_scale x max_update_norm),
    # weight (r_k and its size at discovery claimed as attack_scale), counters (absurd counters).
    attack: str = "none"
    attack_client: int = 0
    attack_scale: float = 100.0


ROBUST_RULES = ("none", "trimmed_mean", "median", "krum")


@dataclass(frozen=True)
class AggregationConfig:
    """How the server bounds each accepted update's influence and combines them
    (fedlabel/robust.py).

    Every round, before aggregation: an update whose L2 norm exceeds clip_to_median x the lower
    median norm of the round's accepted updates is scaled down to that norm, and a weight r_k
    above weight_to_median x the lower median weight is lowered to it (0 disables either); then
    ``robust`` combines the deltas: none (weighted mean, FedAvg), trimmed_mean (coordinate-wise,
    trim_fraction cut at each end), median (coordinate-wise) or krum (Blanchard et al. 2017:
    the krum_select updates with the lowest Krum scores for krum_malicious dishonest sites,
    averaged by r_k). Robust rules ignore r_k except Krum's mean. Under privacy=central_dp the
    mechanism's own fixed clipping and equal weights bound each update instead."""

    clip_to_median: float = 3.0
    weight_to_median: float = 10.0
    robust: str = "none"
    trim_fraction: float = 0.2
    krum_malicious: int = 1
    krum_select: int = 1


PRIVACY_MECHANISMS = ("none", "dpsgd", "central_dp")
ATTACKS = ("none", "scale", "norm", "weight", "counters")


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy (fedlabel/privacy/). ``name``: none | dpsgd (record-level DP-SGD in
    every branch that trains on client data) | central_dp (client-level DP: each client's update
    clipped to max_grad_norm, Gaussian noise on the aggregate)."""

    name: str = "none"
    noise_multiplier: float = 1.0  # z: noise std = z * max_grad_norm (per step / per round)
    max_grad_norm: float = 1.0  # C: L2 bound per sample (dpsgd) or per client update (central_dp)
    delta: float = 1e-5  # epsilon is reported at this delta
    clipping: str = "server"  # central_dp: server | client (who clips each update)
    accountant: str = "rdp"  # rdp | prv (Opacus accountants)
    # dpsgd: how the clipped sum of per-record gradients is computed: bk (one backward pass,
    # fedlabel/privacy/bookkeeping.py) | ew | hooks | functorch (Opacus's per-sample gradients);
    # the same sums to float tolerance, bk the fastest on the default CNN (docs/privacy.md)
    grad_sample_mode: str = "bk"
    # Draw every DP noise value (DP-SGD noise and Poisson batches, central-DP noise, bag-count
    # noise)
    # from generators seeded by the OS's entropy instead of the run's seed, so nobody who knows the
    # config can regenerate the noise (fedlabel/privacy/noise.py). Always on at deployed sites.
    secure_noise: bool = False


@dataclass(frozen=True)
class StopConfig:
    """Early stopping on the central validation accuracy, or the test accuracy in a run without
    a validation set (checked at evaluated rounds; summary.json's status is then
    "stopped_early", with the reason in stop_reason)."""

    # stop after this many rounds without a higher accuracy (validation accuracy where the run
    # has a validation set, else test accuracy); 0 = off
    patience: int = 0
    target_accuracy: float = 0.0  # stop once that accuracy reaches this; 0 = off


@dataclass(frozen=True)
class MlflowConfig:
    """Also log the run to MLflow (pip install 'fedlabel[mlflow]'): its config as params, every
    round's metrics, and its PNGs as artifacts."""

    enabled: bool = False
    tracking_uri: str = ""  # "" = a local file store in output_dir/mlruns
    experiment: str = "fedlabel"


@dataclass(frozen=True)
class Config:
    algorithm: AlgorithmParams = field(default_factory=lambda: ALGORITHMS["fedlabel"].params())
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    rounds: int = 30
    clients_per_round: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # central test-set evaluation every N rounds (and after the last)
    eval_last: int = (
        0  # also evaluate every round of the last N rounds (final means stay per round)
    )
    output_dir: str = "outputs/run"
    checkpoint_every: int = 1  # write output_dir/checkpoint.pt every N rounds (and after the last)
    resume: bool = False  # continue the run in output_dir from its checkpoint
    overwrite: bool = False  # replace the run in output_dir (its files are removed first)
    # also log every round to output_dir/tensorboard (pip install 'fedlabel[tensorboard]')
    tensorboard: bool = False
    stop: StopConfig = field(default_factory=StopConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> Config


def _build(cls: type, values: dict[str, Any], path: str) -> Any:
    """Instantiate a (defaulted) config dataclass from a dict, type-checking every value."""
    return cls(**_fields(cls, values, path))


def _fields(cls: type, values: dict[str, Any], path: str) -> dict[str, Any]:
    """The constructor arguments of a config dataclass from a dict, every value type-checked."""
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(path + k for k in unknown)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}{key} must be a group of settings, got {value!r}")
            kwargs[key] = _build(type(default), value, f"{path}{key}.")
        else:
            kwargs[key] = _coerce(value, type(default), f"{path}{key}")
    return kwargs


def _coerce(value: Any, kind: type, name: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (e.g. a resolved Hydra config)."""
    values = dict(values)
    algo = values.pop("algorithm", {}) or {}
    if not isinstance(algo, dict):
        raise ConfigError(f"algorithm must be a group of settings, got {algo!r}")
    algo = dict(algo)
    name = algo.get("name", "fedlabel")
    if not isinstance(name, str) or name not in ALGORITHMS:
        raise ConfigError(
            f"algorithm.name: unknown algorithm {name!r}; choose from {sorted(ALGORITHMS)}"
        )
    preset = ALGORITHMS[name]
    params = preset.params(**_fields(preset.algorithm.Params, algo, "algorithm."))
    stop = values.get("stop")
    if isinstance(stop, dict) and "target_accuracy" in stop and stop["target_accuracy"] is None:
        values["stop"] = {
            **stop,
            "target_accuracy": 0.0,
        }  # null = off, as 0 (run_config has no null)
    cfg = _build(Config, values, "")
    cfg = dataclasses.replace(cfg, algorithm=params)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> Flower run_config keys joined by '.'."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


COMMON_KEYS = tuple(f.name for f in dataclasses.fields(AlgorithmParams) if f.name != "name")


def _algorithm_run_config(params: AlgorithmParams) -> dict[str, Any]:
    """The run_config keys of one algorithm's params: algorithm.name, the COMMON_KEYS, and its
    other keys under algorithm.<name>. (a preset's fixed keys are not settable, so not there)."""
    flat = {"algorithm.name": params.name}
    for key in ALGORITHMS[params.name].keys():
        section = "algorithm." if key in COMMON_KEYS else f"algorithm.{params.name}."
        flat[section + key] = getattr(params, key)
    return flat


def to_run_config(cfg: Config) -> dict[str, Any]:
    """Config -> the flat run_config that `flwr run --run-config` takes (only its algorithm's
    keys)."""
    flat: dict[str, Any] = {}
    for key, value in config_to_dict(cfg).items():
        flat.update(
            _algorithm_run_config(cfg.algorithm) if key == "algorithm" else flatten({key: value})
        )
    return flat


def config_from_run_config(run_config: dict[str, Any]) -> Config:
    """Flower run_config (flat) -> Config: algorithm.name picks its section algorithm.<name>.;
    the other names' sections are dropped."""
    nested = unflatten(dict(run_config))
    algo = nested.get("algorithm", {})
    name = algo.get("name", "fedlabel")
    if name in ALGORITHMS:
        own = algo.get(name, {})
        nested["algorithm"] = {**{k: v for k, v in algo.items() if not isinstance(v, dict)}, **own}
    return config_from_dict(nested)


def default_run_config() -> dict[str, Any]:
    """Every run_config key Flower must know (pyproject.toml's [tool.flwr.app.config]): the schema
    defaults, with every algorithm name's own keys and defaults in its section."""
    flat = to_run_config(Config())
    for preset in ALGORITHMS.values():
        flat.update(
            {
                k: v
                for k, v in _algorithm_run_config(preset.params()).items()
                if k != "algorithm.name"
            }
        )
    return flat


# ---------------------------------------------------------------------------------------------
# validation


def _validate_bags(d: DataConfig, algorithm: str) -> None:
    check(d.bag_size >= 0, "data.bag_size", f"must be >= 0 (0 = instance labels), got {d.bag_size}")
    check(
        not (d.bag_size or d.bag_key) or ALGORITHMS[algorithm].algorithm.trains_on_bags,
        "data.bag_size",
        f"algorithm {algorithm} trains on instance labels in its own loop; bags (LLP) work with "
        f"{', '.join(sorted(n for n, p in ALGORITHMS.items() if p.algorithm.trains_on_bags))}",
    )
    check(
        not (d.bag_size and d.bag_key),
        "data.bag_key",
        "set either data.bag_size (random bags) or data.bag_key (given bags), not both",
    )
    check(
        not d.bag_key or d.name == "npz",
        "data.bag_key",
        "bag ids come from an .npz array; needs data.name=npz",
    )
    check(
        d.llp_method in ("dllp", "bp"),
        "data.llp_method",
        f"unknown LLP method {d.llp_method!r}; choose dllp or bp",
    )
    check(
        d.proportion_epsilon >= 0,
        "data.proportion_epsilon",
        f"must be >= 0 (0 = exact proportions), got {d.proportion_epsilon}",
    )
    check(
        d.proportion_epsilon == 0 or bool(d.bag_size or d.bag_key),
        "data.proportion_epsilon",
        "noise on bag proportions needs bags: set data.bag_size or data.bag_key",
    )
    check(
        d.proportion_noise in ("laplace", "gaussian"),
        "data.proportion_noise",
        f"unknown mechanism {d.proportion_noise!r}; choose laplace or gaussian",
    )
    check(
        0 < d.proportion_delta < 1,
        "data.proportion_delta",
        f"must be in (0, 1), got {d.proportion_delta}",
    )
    check(d.bp_neighbors >= 1, "data.bp_neighbors", f"must be >= 1, got {d.bp_neighbors}")
    check(
        d.bp_lambda_similarity >= 0,
        "data.bp_lambda_similarity",
        f"must be >= 0, got {d.bp_lambda_similarity}",
    )
    check(d.bp_lambda_bag >= 0, "data.bp_lambda_bag", f"must be >= 0, got {d.bp_lambda_bag}")
    check(d.bp_iterations >= 1, "data.bp_iterations", f"must be >= 1, got {d.bp_iterations}")
    check(0 <= d.bp_damping < 1, "data.bp_damping", f"must be in [0, 1), got {d.bp_damping}")
    check(
        d.bp_bag_loss_weight >= 0,
        "data.bp_bag_loss_weight",
        f"must be >= 0, got {d.bp_bag_loss_weight}",
    )


def _is_ray_address(address: str) -> bool:
    """ "", "auto" or host:port (Ray Client's ray:// addresses are not supported: the simulation
    runtime drives its actors as a Ray driver on a node of the cluster)."""
    if address in ("", "auto"):
        return True
    host, _, port = address.rpartition(":")
    return bool(host) and "/" not in host and port.isdigit() and 0 < int(port) < 65536


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first impossible field; called before any work starts."""
    d = cfg.data
    check(
        d.name in ("fashion_mnist", "npz"),
        "data.name",
        f"unknown data set {d.name!r}; choose fashion_mnist or npz",
    )
    check(
        d.name != "npz" or bool(d.root),
        "data.root",
        "data.name=npz needs data.root=<path to the .npz file>",
    )
    check(
        d.partition in ("iid", "dirichlet"),
        "data.partition",
        f"unknown partition {d.partition!r}; choose iid or dirichlet",
    )
    check(d.alpha > 0, "data.alpha", f"must be > 0, got {d.alpha}")
    check(0 < d.label_ratio <= 1, "data.label_ratio", f"must be in (0, 1], got {d.label_ratio}")
    check(
        d.labeled_class_alpha >= 0,
        "data.labeled_class_alpha",
        f"must be >= 0 (0 = uniform split), got {d.labeled_class_alpha}",
    )
    check(d.num_clients >= 1, "data.num_clients", f"must be >= 1, got {d.num_clients}")
    check(
        d.train_samples >= 0, "data.train_samples", f"must be >= 0 (0 = all), got {d.train_samples}"
    )
    check(
        0 <= d.val_fraction < 1,
        "data.val_fraction",
        f"must be in [0, 1) (0 = no validation set), got {d.val_fraction}",
    )
    check(d.test_samples >= 0, "data.test_samples", f"must be >= 0 (0 = all), got {d.test_samples}")
    check(d.min_client_size >= 1, "data.min_client_size", f"must be >= 1, got {d.min_client_size}")
    _validate_bags(d, cfg.algorithm.name)
    check(
        cfg.model.name in ("cnn", "resnet18"),
        "model.name",
        f"unknown model {cfg.model.name!r}; choose cnn or resnet18",
    )
    check(
        cfg.model.activation in ("relu", "tanh"),
        "model.activation",
        f"unknown activation {cfg.model.activation!r}; choose relu or tanh",
    )
    e = cfg.engine
    check(
        e.name in ENGINES, "engine.name", f"unknown engine {e.name!r}; choose from {list(ENGINES)}"
    )
    check(e.workers >= 1, "engine.workers", f"must be >= 1, got {e.workers}")
    check(
        e.chunk_clients >= 0,
        "engine.chunk_clients",
        f"must be >= 0 (0 = fit to memory), got {e.chunk_clients}",
    )
    check(
        e.num_cpus_per_client >= 1,
        "engine.num_cpus_per_client",
        f"must be >= 1, got {e.num_cpus_per_client}",
    )
    check(
        e.num_gpus_per_client >= 0,
        "engine.num_gpus_per_client",
        f"must be >= 0, got {e.num_gpus_per_client}",
    )
    check(
        0 <= e.superlink_port < 65536,
        "engine.superlink_port",
        f"must be a port number, got {e.superlink_port}",
    )
    check(
        e.workers == 1 or not (d.bag_size or d.bag_key),
        "engine.workers",
        "worker processes need instance labels; with bags (data.bag_size/data.bag_key) use"
        " engine.workers=1",
    )
    check(
        _is_ray_address(e.ray_address),
        "engine.ray_address",
        f'must be "" (local Ray), "auto" or host:port of a Ray head, got {e.ray_address!r}',
    )
    check(cfg.rounds >= 1, "rounds", f"must be >= 1, got {cfg.rounds}")
    check(0 <= cfg.seed < 2**63, "seed", f"must be in [0, 2**63), got {cfg.seed}")
    check(
        not (cfg.resume and cfg.overwrite),
        "overwrite",
        "resume=true continues the run in output_dir; overwrite=true replaces it: set one of them",
    )
    check(
        cfg.clients_per_round >= 1,
        "clients_per_round",
        f"must be >= 1, got {cfg.clients_per_round}",
    )
    check(
        cfg.clients_per_round <= d.num_clients,
        "clients_per_round",
        f"{cfg.clients_per_round} is more than data.num_clients={d.num_clients}",
    )
    check(cfg.eval_every >= 1, "eval_every", f"must be >= 1, got {cfg.eval_every}")
    check(cfg.eval_last >= 0, "eval_last", f"must be >= 0, got {cfg.eval_last}")
    check(
        cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
        "device",
        f"unknown device {cfg.device!r}; choose auto, cpu or cuda[:N]",
    )
    check(bool(cfg.output_dir), "output_dir", "must not be empty")
    check(
        cfg.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {cfg.checkpoint_every}"
    )
    _validate_faults(cfg.faults, cfg.clients_per_round)
    _validate_attack(cfg)
    _validate_aggregation(cfg)
    check(
        not cfg.tensorboard or importlib.util.find_spec("tensorboard") is not None,
        "tensorboard",
        "needs the optional package tensorboard: pip install 'fedlabel[tensorboard]' (or"
        " tensorboard=false)",
    )
    _validate_tracking(cfg)
    validate_privacy(cfg)
    ALGORITHMS[cfg.algorithm.name].check(cfg.algorithm)
    cfg.algorithm.validate()
    ALGORITHMS[cfg.algorithm.name].algorithm.check(cfg)


def _validate_tracking(cfg: Config) -> None:
    s, m = cfg.stop, cfg.mlflow
    check(s.patience >= 0, "stop.patience", f"must be >= 0 (0 = off), got {s.patience}")
    check(
        0 <= s.target_accuracy <= 1,
        "stop.target_accuracy",
        f"must be in [0, 1] (0 = off), got {s.target_accuracy}",
    )
    check(
        not m.enabled or importlib.util.find_spec("mlflow") is not None,
        "mlflow.enabled",
        "needs the optional package mlflow: pip install 'fedlabel[mlflow]' (or"
        " mlflow.enabled=false)",
    )
    check(bool(m.experiment), "mlflow.experiment", "must not be empty")


def validate_privacy(cfg: Config) -> None:
    p = cfg.privacy
    check(
        p.name in PRIVACY_MECHANISMS,
        "privacy.name",
        f"unknown mechanism {p.name!r}; choose from {list(PRIVACY_MECHANISMS)}",
    )
    check(
        p.noise_multiplier > 0, "privacy.noise_multiplier", f"must be > 0, got {p.noise_multiplier}"
    )
    check(p.max_grad_norm > 0, "privacy.max_grad_norm", f"must be > 0, got {p.max_grad_norm}")
    check(0 < p.delta < 1, "privacy.delta", f"must be in (0, 1), got {p.delta}")
    check(
        p.clipping in ("server", "client"),
        "privacy.clipping",
        f"unknown side {p.clipping!r}; choose server or client",
    )
    check(
        p.accountant in ("rdp", "prv"),
        "privacy.accountant",
        f"unknown accountant {p.accountant!r}; choose rdp or prv",
    )
    check(
        p.grad_sample_mode in GRAD_SAMPLE_MODES,
        "privacy.grad_sample_mode",
        f"unknown mode {p.grad_sample_mode!r}; choose from {list(GRAD_SAMPLE_MODES)}",
    )
    if p.name == "dpsgd":
        supported = sorted(n for n, p in ALGORITHMS.items() if p.algorithm.dpsgd_supported)
        check(
            ALGORITHMS[cfg.algorithm.name].algorithm.dpsgd_supported,
            "privacy.name",
            "privacy=dpsgd covers algorithms that train on one record set per SGD step"
            f" ({', '.join(supported)}); {cfg.algorithm.name} trains on labeled and unlabeled"
            " records in one step or with its own SGD loop",
        )
        check(
            not (cfg.data.bag_size or cfg.data.bag_key),
            "privacy.name",
            "privacy=dpsgd with bags (data.bag_size/data.bag_key) is not supported: a bag's loss"
            " couples its images, so per-image clipping bounds no bag's influence; use"
            " data.proportion_epsilon or central_dp",
        )
    if p.name == "central_dp":
        conflict = ALGORITHMS[cfg.algorithm.name].algorithm.central_dp_conflict
        check(
            not conflict,
            "privacy.name",
            f"central_dp cannot run algorithm.name={cfg.algorithm.name}: its private "
            f"aggregation replaces the algorithm's own, which {conflict}",
        )
        check(
            cfg.aggregation.robust == "none",
            "aggregation.robust",
            f"{cfg.aggregation.robust} with privacy.name=central_dp: the noise is calibrated to the"
            " mean of clipped updates, which a robust rule would replace",
        )
    check(
        not (p.secure_noise and cfg.data.proportion_epsilon > 0 and cfg.engine.name == "flower"),
        "privacy.secure_noise",
        "true with data.proportion_epsilon > 0 needs engine=inprocess or vectorized: engine=flower"
        " rebuilds every client's bags in each worker, so each would release fresh noisy counts"
        " (epsilon spent again)",
    )


def _validate_attack(cfg: Config) -> None:
    f = cfg.faults
    check(
        f.attack in ATTACKS,
        "faults.attack",
        f"unknown attack {f.attack!r}; choose from {list(ATTACKS)}",
    )
    if f.attack == "none":
        return
    check(
        cfg.engine.name != "flower",
        "faults.attack",
        f"{f.attack}: a dishonest site is simulated by engine=inprocess or vectorized only",
    )
    check(
        0 <= f.attack_client < cfg.data.num_clients,
        "faults.attack_client",
        f"must be a client id in [0, data.num_clients={cfg.data.num_clients}), got"
        f" {f.attack_client}",
    )
    check(
        math.isfinite(f.attack_scale) and f.attack_scale > 0,
        "faults.attack_scale",
        f"must be a finite number > 0, got {f.attack_scale}",
    )
    check(
        f.attack != "norm" or f.max_update_norm > 0,
        "faults.attack",
        "norm scales the update to faults.attack_scale x faults.max_update_norm, which is 0 (no"
        " bound)",
    )


def _validate_aggregation(cfg: Config) -> None:
    a, n = cfg.aggregation, cfg.clients_per_round
    check(
        a.clip_to_median >= 0,
        "aggregation.clip_to_median",
        f"must be >= 0 (0 = off), got {a.clip_to_median}",
    )
    check(
        a.weight_to_median >= 0,
        "aggregation.weight_to_median",
        f"must be >= 0 (0 = off), got {a.weight_to_median}",
    )
    check(
        a.robust in ROBUST_RULES,
        "aggregation.robust",
        f"unknown rule {a.robust!r}; choose from {list(ROBUST_RULES)}",
    )
    if a.robust == "trimmed_mean":
        check(
            0 <= a.trim_fraction < 0.5,
            "aggregation.trim_fraction",
            f"must be in [0, 0.5), got {a.trim_fraction}",
        )
        check(
            int(a.trim_fraction * n) >= 1,
            "aggregation.trim_fraction",
            f"{a.trim_fraction} trims no update of a cohort of clients_per_round={n} (needs >="
            f" {1 / n:.3g})",
        )
    if a.robust == "krum":
        check(
            a.krum_malicious >= 0,
            "aggregation.krum_malicious",
            f"must be >= 0, got {a.krum_malicious}",
        )
        check(
            n > 2 * a.krum_malicious + 2,
            "aggregation.krum_malicious",
            f"Krum needs clients_per_round > 2 x krum_malicious + 2; got {n} clients for"
            f" {a.krum_malicious}",
        )
        check(
            1 <= a.krum_select <= n - a.krum_malicious,
            "aggregation.krum_select",
            f"must be in [1, clients_per_round - krum_malicious = {n - a.krum_malicious}], got"
            f" {a.krum_select}",
        )


def _validate_faults(f: FaultsConfig, clients_per_round: int) -> None:
    for name in ("crash_prob", "dropout_prob", "straggler_prob"):
        value = getattr(f, name)
        check(0 <= value <= 1, f"faults.{name}", f"must be a probability in [0, 1], got {value}")
    total = f.crash_prob + f.dropout_prob + f.straggler_prob
    check(
        total <= 1,
        "faults",
        f"crash_prob + dropout_prob + straggler_prob must be <= 1, got {total}",
    )
    check(
        f.round_deadline_s >= 0,
        "faults.round_deadline_s",
        f"must be >= 0 (0 = no deadline), got {f.round_deadline_s}",
    )
    check(
        f.round_deadline_s > 0 or f.dropout_prob + f.straggler_prob == 0,
        "faults.round_deadline_s",
        "dropout_prob or straggler_prob > 0 needs a round deadline (> 0) to end the round",
    )
    check(
        1 <= f.min_clients <= clients_per_round,
        "faults.min_clients",
        f"must be in [1, clients_per_round={clients_per_round}], got {f.min_clients}",
    )
    check(
        f.max_update_norm >= 0,
        "faults.max_update_norm",
        f"must be >= 0 (0 = no bound), got {f.max_update_norm}",
    )
