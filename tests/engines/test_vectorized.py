"""engine=vectorized trains a cohort as one batched computation and must reproduce the
sequential in-process engine (same batches, same augmentations) up to float rounding.

Rounding is not the whole story: batched convolutions add in another order, and a ReLU whose
input is within rounding of 0 then gates differently, which changes that step's gradient by up to
a few percent (measured: one hidden unit of one client in the first step). So the first step's
losses (fixed by the batches and augmentations alone) are compared tightly, pseudo-label counts
exactly, and multi-round losses, accuracy and models with a margin for such gates."""

import pytest
import torch

import fedlabel
from fedlabel.training import ClientContext
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

COUNTS = [
    "round",
    "clients",
    "pseudo_label_coverage",
    "pseudo_label_accuracy",
    "global_expert_share",
    "global_expert_accuracy",
    "local_expert_accuracy",
]
FLOATS = ["accuracy", "loss", "loss_labeled", "loss_unlabeled"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# uneven batches (batch 48 > some clients' labeled count), momentum and weight decay, and the
# FedLabel variants that change the batched computation's shape
VARIANTS = {
    "fedprox": [
        "algorithm.batch_size=48",
        "algorithm.momentum=0.9",
        "algorithm.weight_decay=0.001",
        "algorithm.mu=0.5",
    ],
    "fedlabel": [
        "algorithm.unlabeled_sampling=kept",
        "algorithm.kl_input=clean",
        "algorithm.strong_num_ops=2",
        "algorithm.aggregation=split",
        "algorithm.momentum=0.5",
        "algorithm.beta=0.3",
    ],
}


def _run(tmp_path, engine, algorithm, device, overrides=(), name=None):
    values = tiny_config(
        tmp_path, engine=engine, algorithm=algorithm, name=name or engine, overrides=list(overrides)
    )
    values["device"] = device
    summary = fedlabel.run(values, progress=False)
    return summary, torch.load(tmp_path / (name or engine) / "model.pt")


@pytest.fixture(autouse=True)
def _no_tf32():
    """cuDNN's default TF32 convolutions round to 10 bits: compare at full float32."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("algorithm", "variant"), [("fedprox", True), ("fedlabel", False), ("fedlabel", True)]
)
def test_vectorized_equals_sequential(tmp_path, algorithm, device, variant):
    overrides = VARIANTS[algorithm] if variant else []
    seq, seq_model = _run(tmp_path, "inprocess", algorithm, device, overrides)
    vec, vec_model = _run(tmp_path, "vectorized", algorithm, device, overrides)
    assert vec["status"] == "completed" and len(vec["rounds"]) == len(seq["rounds"]) == 2
    for a, b in zip(seq["rounds"], vec["rounds"]):
        assert {k: a[k] for k in COUNTS} == {k: b[k] for k in COUNTS}
        for k in FLOATS:
            assert (a[k] is None) == (b[k] is None), k
            if a[k] is not None:
                assert b[k] == pytest.approx(
                    a[k], rel=2e-3, abs=5e-3 if k == "accuracy" else 1e-5
                ), k
    assert seq_model.keys() == vec_model.keys()
    initial = _initial(tmp_path, algorithm)
    moved = max(float((seq_model[k] - initial[k]).abs().max()) for k in seq_model)
    apart = max(float((vec_model[k] - seq_model[k]).abs().max()) for k in seq_model)
    assert moved > 1e-2 and apart < 0.1 * moved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["fedavg", "fedlabel", "fedlabel_global_only"])
def test_first_step_losses_and_counts_match_each_client(tmp_path, algorithm, device):
    """One step per branch: each client's loss depends only on its batches and augmentations."""
    from fedlabel.algorithms import build_algorithm
    from fedlabel.config import config_from_dict
    from fedlabel.engines.vectorized import batched_trainer
    from fedlabel.federation import client_generator, initial_model, load_federated

    steps = ["algorithm.local_steps=1"] + (
        ["algorithm.unlabeled_steps=1"] if algorithm == "fedlabel" else []
    )
    cfg = config_from_dict(
        tiny_config(tmp_path, algorithm=algorithm, overrides=steps + ["algorithm.batch_size=48"])
    )
    fed = load_federated(cfg)
    model, params = initial_model(cfg, in_channels=1, num_classes=10, image_size=28)
    dev = torch.device(device)
    model, params = model.to(dev), {k: v.to(dev) for k, v in params.items()}
    algo = build_algorithm(cfg.algorithm)
    ids = list(range(cfg.data.num_clients))
    gens = lambda: [client_generator(seed=0, round=1, client_id=c) for c in ids]  # noqa: E731
    seq = [
        algo.client_update(model, params, fed.clients[c], ClientContext(dev, g))
        for c, g in zip(ids, gens())
    ]
    vec = batched_trainer(model, algo, fed, dev).train(
        [fed.clients[c] for c in ids], params, gens()
    )
    for a, b in zip(seq, vec):
        assert (a.client_id, a.weight) == (b.client_id, b.weight)
        for k, v in a.metrics.items():
            assert b.metrics[k] == (pytest.approx(v, rel=1e-5) if k.startswith("loss") else v), k
        for k, d in a.deltas["model"].items():
            assert (
                float((b.deltas["model"][k] - d).abs().max()) <= 0.05 * float(d.abs().max()) + 1e-7
            ), k


def _initial(tmp_path, algorithm):
    from fedlabel.config import config_from_dict
    from fedlabel.federation import initial_model

    cfg = config_from_dict(tiny_config(tmp_path, algorithm=algorithm))
    return initial_model(cfg, in_channels=1, num_classes=10, image_size=28)[1]


def test_chunks_of_clients_give_the_same_run(tmp_path):
    whole, whole_model = _run(tmp_path, "vectorized", "fedlabel", "cpu", name="whole")
    split, split_model = _run(
        tmp_path, "vectorized", "fedlabel", "cpu", ["engine.chunk_clients=1"], name="split"
    )
    assert [r["pseudo_label_coverage"] for r in whole["rounds"]] == [
        r["pseudo_label_coverage"] for r in split["rounds"]
    ]
    for k in whole_model:
        torch.testing.assert_close(split_model[k], whole_model[k], rtol=1e-4, atol=1e-5)


def test_negative_chunk_is_a_config_error(tmp_path):
    from fedlabel.errors import ConfigError

    with pytest.raises(ConfigError, match="engine.chunk_clients"):
        fedlabel.run(
            tiny_config(tmp_path, engine="vectorized", overrides=["engine.chunk_clients=-1"]),
            progress=False,
        )


def test_batched_algorithms_and_fallback():
    from fedlabel.algorithms import ALGORITHMS, build_algorithm
    from fedlabel.algorithms.batching import batched_version

    names = {
        n for n, preset in ALGORITHMS.items() if batched_version(build_algorithm(preset.params()))
    }
    assert {"fedavg", "fedprox", "fedlabel", "fedlabel_local_only", "fedlabel_global_only"} <= names
    assert not names & {"fedmatch", "fedtrinet", "fedavg_fixmatch", "fedavg_uda"}


def test_other_algorithms_fall_back_with_a_message(tmp_path, capsys):
    values = tiny_config(
        tmp_path, engine="vectorized", algorithm="fedavg_fixmatch", overrides=["rounds=1"]
    )
    assert fedlabel.run(values, progress=False)["status"] == "completed"
    assert "fedavg_fixmatch" in capsys.readouterr().err
