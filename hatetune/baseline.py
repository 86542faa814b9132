"""The classical baseline: TF-IDF word n-grams + logistic regression (scikit-learn), trained on the same
train split the LLM is fine-tuned on and scored on the same test rows, as context for every table."""
from __future__ import annotations

from typing import List, Sequence


def fit_tfidf_logreg(texts: Sequence[str], labels: Sequence[str], ngram_max: int = 2, min_df: int = 1,
                     c: float = 1.0, seed: int = 42):
    """A fitted sklearn Pipeline (deterministic: lbfgs, fixed random_state)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(set(labels)) < 2:
        raise ValueError(f"the training rows hold fewer than two labels ({sorted(set(labels))})")
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, ngram_max), min_df=min_df, sublinear_tf=True),
        LogisticRegression(C=c, max_iter=2000, random_state=seed),
    )
    return pipeline.fit(list(texts), list(labels))


def predict(pipeline, texts: Sequence[str]) -> List[str]:
    return [str(label) for label in pipeline.predict(list(texts))]
