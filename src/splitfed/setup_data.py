"""The run's data set, a step of ``prepare``: the one config.dataset names (a registered loader, a
``PATH.pt`` file, a folder of clients) or the user's own given as objects, with its partition chosen,
the user's batch transform after the data set's own augmentation, and a validation split held out."""

import logging
from typing import Any

from .config import Config
from .data import DATASETS, PARTITIONS, Dataset
from .data.augment import Augment
from .data.given import given_data, is_given_folder, is_per_client, load_given_file, load_given_folder
from .data.synthetic import SYNTHETIC_SAMPLES, SYNTHETIC_SHAPE
from .data.user import PYTHON_DATA, is_data_file, user_data
from .errors import SplitfedError

log = logging.getLogger("splitfed")


def check_names(cfg: Config, data: Any) -> None:
    """An unknown data set or partition is refused before anything is built or read."""
    if data is None and not names_files(cfg.dataset):
        DATASETS.get(cfg.dataset)
    PARTITIONS.get(cfg.partition)


def load_data(cfg: Config) -> Dataset:
    """The data set config.dataset names: a registered one, or a ``PATH.pt`` file of tensors."""
    if cfg.dataset.startswith(PYTHON_DATA):
        raise SplitfedError(
            f"dataset {cfg.dataset} was given to run() as Python data; pass it again: run(config, data=...)"
        )
    if is_data_file(cfg.dataset):
        return load_given_file(cfg.dataset)
    if cfg.dataset not in DATASETS and is_given_folder(cfg.dataset):
        return load_given_folder(cfg.dataset)
    loader = DATASETS.get(cfg.dataset)
    if cfg.dataset == "synthetic":
        return loader(
            cfg.data_dir,
            shape=tuple(cfg.synthetic.shape or SYNTHETIC_SHAPE),
            samples=cfg.synthetic.samples or SYNTHETIC_SAMPLES,
        )
    return loader(cfg.data_dir)


def run_data(cfg: Config, data: Any, transform: Augment | None) -> tuple[Config, Dataset]:
    """The run's data set (config.dataset's, or ``data`` given as objects) and the config that records
    it and its partition."""
    if data is None:
        data_set = load_data(cfg)
    else:
        data_set = given_data(data, cfg.clients) if is_per_client(data) else user_data(data)
        cfg = cfg.replace(dataset=data_set.name)  # its fingerprint: a resumed run refuses other data
    cfg = choose_partition(cfg, data_set, users=data is not None or names_files(cfg.dataset))
    if transform is not None:
        data_set.augment = _after(data_set.augment, transform)
    if cfg.validation_samples:
        data_set = data_set.hold_out(cfg.validation_samples)
    return cfg, data_set


def names_files(dataset: str) -> bool:
    """Whether config.dataset names the user's data (a file, a folder, or Python objects), not a loader."""
    return dataset.startswith(PYTHON_DATA) or is_data_file(dataset) or is_given_folder(dataset)


def choose_partition(cfg: Config, data: Dataset, users: bool) -> Config:
    """The partition of these data: "given" (and as many clients) when the data came split into
    clients; IID, said in one line, for the user's data with no partition named; else the config's."""
    unnamed = cfg.partition == Config().partition and cfg.non_iid_ratio is None
    if data.parts is not None:
        n = len(data.parts)
        if not (unnamed or cfg.partition == "given"):
            raise SplitfedError(
                f"the data come split into {n} clients; partition {cfg.partition} cannot deal them again "
                "(leave partition unset, or given)"
            )
        if cfg.clients not in (n, Config().clients):
            raise SplitfedError(
                f"clients = {cfg.clients}, but the data are given for {n} clients; leave clients unset or "
                f"set it to {n}"
            )
        return cfg.replace(partition="given", clients=n)
    if cfg.partition == "given":
        raise SplitfedError(
            f"partition given takes the clients from the data, and {cfg.dataset} is one data set; give it "
            "split into clients (docs/api.md) or name another partition: "
            + ", ".join(p for p in PARTITIONS if p != "given")
        )
    if users and unnamed:  # a researcher's own data: no silent non-IID default
        log.info(f"{cfg.dataset}: dealt IID to {cfg.clients} clients (partition iid; name one to choose)")
        return cfg.replace(partition="iid")
    return cfg


def _after(first: Augment | None, then: Augment) -> Augment:
    """The data set's own augmentation (CIFAR-10's crop and flip), then the user's transform."""
    if first is None:
        return then
    return lambda x, g: then(first(x, g), g)
