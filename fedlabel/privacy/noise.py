"""Where DP noise comes from: seeded (simulation, reproducible) or the OS's entropy
(privacy.secure_noise).

Seeded noise is a function of (seed, round, client id), all chosen by the server, so whoever knows
the config can regenerate every noise vector and subtract it: fine for a simulation, where the
runs must be reproducible, and no privacy against the server in a deployment. With
privacy.secure_noise=true (always at a deployed site and on a deployed server, see
:func:`deployed`) every set of draws (one client's DP-SGD update: its noise and its Poisson
batches; one round's central-DP noise; the noisy bag counts of one data build) comes from a fresh
generator seeded with 64 (torch) or 128 (numpy: the counts, fedlabel.data.label_dp) bits from
``secrets``, i.e. the OS's CSPRNG.

What this does and does not give, honestly:
 - Nobody can regenerate the noise from the config: they would have to guess a 64-bit seed per
   client update (2^64 candidates, each checked only by rerunning the client's training).
 - The generators themselves are torch's CPU Mersenne Twister and numpy's PCG64, which are not
   cryptographic: 624 consecutive raw 32-bit outputs of a Mersenne Twister reveal its state. The
   server never sees raw outputs, only noise added to clipped gradient sums (or counts), so we take
   the seed's entropy as the protection; a party that saw raw draws could predict the rest.
 - Floating-point sampling is not hardened (Mironov, CCS 2012, on the least significant bits of
   floating-point Laplace/Gaussian samples). Opacus's ``secure_mode`` addresses both points with
   torchcsprng; torchcsprng's last release (0.2.1, 2021) is built for torch 1.8 and does not install
   with the torch 2.13 used here, so it is not used.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: nothing of the config is needed at run time
    from fedlabel.config import Config, PrivacyConfig

SEEDED = "seeded"
OS_ENTROPY = "os_entropy"


def noise_source(privacy: PrivacyConfig) -> str:
    """What summary.json records as privacy.noise_source."""
    return OS_ENTROPY if privacy.secure_noise else SEEDED


def os_entropy_generator() -> torch.Generator:
    """A torch generator seeded with 64 bits of the OS's entropy (a fresh one per set of draws)."""
    return torch.Generator().manual_seed(secrets.randbits(64))


def deployed(cfg: Config) -> Config:
    """The config as a deployed site or server runs it: DP noise from the OS's entropy, whatever the
    run config says (the server chooses the run config, seed included)."""
    return dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, secure_noise=True))
