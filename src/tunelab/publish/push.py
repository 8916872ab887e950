"""Push the publish/ folder to the Hugging Face Hub or any Hub-compatible endpoint (HF_ENDPOINT).

The token comes from HF_TOKEN or the saved login and is never written or logged. It is checked
first (whoami), so a wrong token is one line before anything is uploaded. Transient failures (429,
5xx, timeouts, dropped connections) are retried with backoff; a retry re-sends only what the
server does not have yet (LFS objects already uploaded are skipped by the client).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)
RETRIES = 4
TRANSIENT = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Pushed:
    url: str
    commit: str


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _auth_error(repo_id: str, status: int | None) -> TunelabError:
    return TunelabError(f"the Hub refused the token for {repo_id} (HTTP {status}): set HF_TOKEN to a token "
                        "with write access, or run `hf auth login`")


def _check_visibility(api, repo_id: str, private: bool, allow_public: bool) -> None:
    """`create_repo(exist_ok=True)` leaves an existing repository as it is: a private push must not land
    in a public one unnoticed."""
    if private and not allow_public and not api.repo_info(repo_id).private:
        raise TunelabError(f"{repo_id} already exists and is public, and publish.private is on: make it private "
                           "on the Hub, or pass --allow-public to push into it as it is")


def push_folder(folder: Path, repo_id: str, private: bool, allow_public: bool = False) -> Pushed:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=os.environ.get("HF_TOKEN"))
    for attempt in itertools.count():
        try:
            api.whoami()
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            _check_visibility(api, repo_id, private, allow_public)
            commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                       commit_message="Upload from tunelab")
            return Pushed(url=str(url), commit=commit.oid)
        except HFValidationError as error:
            reason = str(error).splitlines()[0]
            raise TunelabError(f"--repo-id {repo_id}: not a valid repository id ({reason})") from None
        except HfHubHTTPError as error:
            status = _status(error)
            if status in (401, 403):
                raise _auth_error(repo_id, status) from None
            if status not in TRANSIENT or attempt == RETRIES:
                raise TunelabError(f"push to {repo_id} failed (HTTP {status}): {str(error).splitlines()[0]}") from None
            reason = f"HTTP {status}"
        except (httpx2.TransportError, TimeoutError, ConnectionError) as error:
            if attempt == RETRIES:
                raise TunelabError(f"push to {repo_id} failed: {type(error).__name__}") from None
            reason = type(error).__name__
        wait = 2**attempt
        log.warning("push to %s failed (%s), retrying in %d s (attempt %d of %d)", repo_id, reason, wait,
                    attempt + 1, RETRIES)
        time.sleep(wait)
