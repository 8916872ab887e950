"""Reference point for the LLM: TF-IDF + logistic regression on the very split tunelab trains on.

Usage: python bench/tfidf_baseline.py RUN_DIR   (a run directory written by `tunelab train`)
"""

import sys
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from tunelab.data.examples import user_text
from tunelab.rundir import RunDir, read_jsonl


def main(run_dir: Path) -> None:
    run = RunDir(run_dir)
    train, test = read_jsonl(run.split("train")), read_jsonl(run.split("test"))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform([user_text(e) for e in train])
    classifier = LogisticRegression(max_iter=2000, C=10).fit(features, [e["label"] for e in train])
    predicted = classifier.predict(vectorizer.transform([user_text(e) for e in test]))
    gold = [e["label"] for e in test]
    print(f"TF-IDF + logistic regression on {run_dir}: train {len(train)}, test {len(test)}, "
          f"accuracy {accuracy_score(gold, predicted):.4f}, macro-F1 {f1_score(gold, predicted, average='macro'):.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
