"""Push the publish/ folder to the Hugging Face Hub or any Hub-compatible endpoint (HF_ENDPOINT).

The token comes from HF_TOKEN or the saved login and is never written or logged. Transient
failures (429, 5xx, timeouts) are retried with backoff; auth and repo-id problems are one line.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)
RETRIES = 4


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=os.environ.get("HF_TOKEN"))
    for attempt in itertools.count():
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from tunelab")
            return str(url)
        except HFValidationError as error:
            reason = str(error).splitlines()[0]
            raise TunelabError(f"--repo-id {repo_id}: not a valid repository id ({reason})") from None
        except HfHubHTTPError as error:
            status = _status(error)
            if status in (401, 403):
                raise TunelabError(f"the Hub refused the token for {repo_id} (HTTP {status}): set HF_TOKEN "
                                   "to a token with write access") from None
            if status not in (429, 500, 502, 503, 504) or attempt == RETRIES:
                raise TunelabError(f"push to {repo_id} failed (HTTP {status})") from None
        except (TimeoutError, ConnectionError) as error:
            if attempt == RETRIES:
                raise TunelabError(f"push to {repo_id} failed: {type(error).__name__}") from None
        wait = 2**attempt
        log.warning("push to %s failed, retrying in %d s (attempt %d of %d)", repo_id, wait, attempt + 1, RETRIES)
        time.sleep(wait)
