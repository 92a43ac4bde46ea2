"""``rsna2024 kaggle push / submit / status``: the kaggle client's Python API, imported only here and only after
the credentials are found (``import kaggle`` authenticates at import), every failure one line naming the step.

Credentials, as the client reads them: ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``, or ``kaggle.json`` (``username``,
``key``) in ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle``; newer clients also take an API token (``KAGGLE_API_TOKEN``
or ``access_token`` there) or ``kaggle auth login`` (``credentials.json``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rsna2024.errors import RsnaError
from rsna2024.kaggle import COMPETITION, DEFAULT_ACCELERATOR
from rsna2024.kaggle.metadata import DATASET_METADATA, KERNEL_METADATA, read_metadata
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
INSTALL_HINT = 'pip install -e ".[kaggle]"'
CREDENTIALS_HINT = ("put your API token in ~/.kaggle/kaggle.json (kaggle.com > Settings > API > Create New Token; "
                    "chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY")
READY_POLL_S = 10.0


class KaggleError(RsnaError):
    """The kaggle client is missing, has no credentials, cannot reach Kaggle, or Kaggle refused a request."""


# --------------------------------------------------------------------------- credentials (kaggle not imported)
def config_dir() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")


def _kaggle_json() -> dict:
    path = config_dir() / "kaggle.json"
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


def credentials_source() -> str | None:
    """Where the kaggle client will find credentials (a short description), or None when there are none."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if {"username", "key"} <= _kaggle_json().keys():
        return str(config_dir() / "kaggle.json")
    for name in ("access_token", "credentials.json"):
        if (config_dir() / name).is_file():
            return str(config_dir() / name)
    return None


def configured_username() -> str | None:
    """The Kaggle user name of the configured credentials (``KAGGLE_USERNAME``, else ``kaggle.json``), or None."""
    return os.environ.get("KAGGLE_USERNAME") or _kaggle_json().get("username") or None


def client():
    """An authenticated ``KaggleApi``; KaggleError when the client is not installed or no credentials are set."""
    if importlib.util.find_spec("kaggle") is None:
        raise KaggleError(f"the kaggle client is not installed: {INSTALL_HINT}")
    if credentials_source() is None:
        raise KaggleError(f"no Kaggle credentials: {CREDENTIALS_HINT}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the import authenticates and prints its own help
            from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        api.authenticate()
    except SystemExit:
        raise KaggleError(f"the kaggle client refused the credentials of {credentials_source()}: "
                          f"{CREDENTIALS_HINT}") from None
    return api


# --------------------------------------------------------------------------- errors
def _field(obj, name: str, default=None):
    """A response's field: clients answer objects (newer) or dicts (older)."""
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


@contextlib.contextmanager
def kaggle_errors(step: str):
    """Turn the client's failures in ``step`` into one-line KaggleErrors."""
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as exc:
        response = exc.response
        status = getattr(response, "status_code", "?")
        body = " ".join((getattr(response, "text", "") or "").split())[:300]
        raise KaggleError(f"{step}: Kaggle answered HTTP {status} {getattr(response, 'reason', '')}: {body}") from None
    except requests.exceptions.RequestException as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        raise KaggleError(f"{step}: cannot reach Kaggle ({type(exc).__name__}: {reason or exc})") from None
    except ValueError as exc:  # the client's own checks of metadata and arguments
        raise KaggleError(f"{step}: {' '.join(str(exc).split())}") from None


def _check_response(step: str, response) -> None:
    error = _field(response, "error")
    if error:
        raise KaggleError(f"{step}: Kaggle refused it: {error}")


# --------------------------------------------------------------------------- push
@dataclass
class PushResult:
    dataset: str | None = None
    dataset_url: str | None = None
    kernel: str | None = None
    kernel_version: int | None = None
    kernel_url: str | None = None

    def format(self) -> str:
        lines = []
        if self.dataset:
            lines.append(f"dataset {self.dataset}: uploaded ({self.dataset_url or 'url not returned'})")
        if self.kernel:
            lines.append(f"kernel {self.kernel}: version {self.kernel_version} pushed and running "
                         f"({self.kernel_url or 'url not returned'}); follow it with rsna2024 kaggle status --kernel "
                         f"{self.kernel}, then rsna2024 kaggle submit --kernel {self.kernel} --version "
                         f"{self.kernel_version} -m MESSAGE")
        return "\n".join(lines)


def _dataset_exists(api, ref: str) -> bool:
    import requests

    try:
        api.dataset_status(ref)
    except requests.exceptions.HTTPError as exc:
        if getattr(exc.response, "status_code", None) in (403, 404):
            return False
        raise
    return True


def push_dataset(api, folder: Path, message: str) -> tuple[str, str | None]:
    """Create the dataset of ``folder`` (private), or a new version when it exists; its folders (runs/, wheels/)
    are uploaded as zip archives, which Kaggle unpacks into the same tree. Returns (id, url)."""
    ref = read_metadata(folder, DATASET_METADATA)["id"]
    with kaggle_errors(f"kaggle datasets status {ref}"):
        exists = _dataset_exists(api, ref)
    step = f"kaggle datasets {'version' if exists else 'create'} -p {folder}"
    log.info("%s (%s)", step, "new version" if exists else "new dataset")
    with kaggle_errors(step):
        if exists:
            response = api.dataset_create_version(str(folder), message, dir_mode="zip")
        else:
            response = api.dataset_create_new(str(folder), public=False, dir_mode="zip")
    _check_response(step, response)
    return ref, _field(response, "url")


def wait_dataset_ready(api, ref: str, timeout_s: float, poll_s: float = READY_POLL_S) -> None:
    """Wait until Kaggle has processed the dataset ``ref`` (a kernel cannot attach it before)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with kaggle_errors(f"kaggle datasets status {ref}"):
            status = str(api.dataset_status(ref)).lower()
        if "ready" in status:
            return
        if "error" in status:
            raise KaggleError(f"dataset {ref}: Kaggle could not process it (status {status})")
        if time.monotonic() > deadline:
            raise KaggleError(f"dataset {ref}: not ready after {timeout_s:.0f} s (status {status}); push the kernel "
                              "later with rsna2024 kaggle push --kernel DIR")
        log.info("dataset %s: %s, waiting", ref, status)
        time.sleep(poll_s)


def push_kernel(api, folder: Path, accelerator: str | None = DEFAULT_ACCELERATOR) -> tuple[str, int | None, str]:
    """Push (upload and run) the kernel of ``folder``; returns (id, version, url)."""
    ref = read_metadata(folder, KERNEL_METADATA)["id"]
    step = f"kaggle kernels push -p {folder}"
    kwargs = {}
    if accelerator:
        if "acc" not in inspect.signature(api.kernels_push).parameters:
            raise KaggleError(f"{step}: this kaggle client takes no accelerator: pip install -U kaggle, or pass "
                              "--accelerator ''")
        kwargs["acc"] = accelerator
    with kaggle_errors(step):
        response = api.kernels_push(str(folder), **kwargs)
    _check_response(step, response)
    for field in ("invalidDatasetSources", "invalidCompetitionSources", "invalidKernelSources"):
        if _field(response, field):
            raise KaggleError(f"{step}: Kaggle did not accept the {field[7:]}: {_field(response, field)}")
    return ref, _field(response, "versionNumber"), _field(response, "url")


def push(dataset: Path | None = None, kernel: Path | None = None, accelerator: str | None = DEFAULT_ACCELERATOR,
         message: str | None = None, wait_s: float = 900.0) -> PushResult:
    """Upload the package: the dataset folder (create or new version, then wait until it is ready), then the
    kernel folder (push, which runs it). Either may be None."""
    if dataset is None and kernel is None:
        raise KaggleError("nothing to push: give --dataset and/or --kernel")
    metas = {}
    for folder, name in ((dataset, DATASET_METADATA), (kernel, KERNEL_METADATA)):
        if folder is not None:
            metas[name] = read_metadata(folder, name)  # before any network call
    if dataset is not None and kernel is not None:
        ref = metas[DATASET_METADATA]["id"]
        if ref not in metas[KERNEL_METADATA].get("dataset_sources", []):
            raise KaggleError(f"{kernel / KERNEL_METADATA}: its dataset_sources do not hold the dataset {ref} "
                              "pushed with it (build both with one rsna2024 kaggle package)")
    api = client()
    result = PushResult()
    if dataset is not None:
        from rsna2024 import __version__

        result.dataset, result.dataset_url = push_dataset(api, dataset, message or f"rsna2024 {__version__} package")
        if kernel is not None:
            wait_dataset_ready(api, result.dataset, wait_s)
    if kernel is not None:
        result.kernel, result.kernel_version, result.kernel_url = push_kernel(api, kernel, accelerator)
    return result


# --------------------------------------------------------------------------- submit, status
def _check_kernel_ref(kernel: str) -> str:
    if kernel.count("/") != 1 or not all(kernel.split("/")):
        raise KaggleError(f"--kernel {kernel!r}: expected USER/SLUG")
    return kernel


def submit(kernel: str, version: int, message: str, competition: str = COMPETITION) -> str:
    """Submit version ``version`` of the notebook ``kernel`` (``user/slug``) to the code competition; Kaggle runs
    it on the hidden test set and scores its ``submission.csv``. Returns Kaggle's answer."""
    _check_kernel_ref(kernel)
    api = client()
    if not hasattr(api, "competition_submit_code"):
        raise KaggleError("this kaggle client cannot submit a notebook version: pip install -U kaggle")
    step = f"kaggle competitions submit -c {competition} -k {kernel} -v {version}"
    with kaggle_errors(step):
        response = api.competition_submit_code("submission.csv", message, competition, kernel=kernel,
                                               kernel_version=version, quiet=True)
    _check_response(step, response)
    return str(_field(response, "message") or f"submitted {kernel} version {version} to {competition}")


def status(kernel: str) -> str:
    """The state of the latest run of ``kernel`` (``user/slug``), with Kaggle's failure message when it failed."""
    _check_kernel_ref(kernel)
    api = client()
    with kaggle_errors(f"kaggle kernels status {kernel}"):
        response = api.kernels_status(kernel)
    state = _field(response, "status")
    failure = _field(response, "failureMessage") or _field(response, "failure_message")
    text = f"{kernel}: {getattr(state, 'name', state)}".rstrip()
    return f"{text} ({failure})" if failure else text
