"""A spaCy component of your own on torchlayers: a document regressor, trained, saved, loaded.

`doc_score` predicts one number per doc (here: how "sunny" a sentence is, from a toy lexicon)
and writes it to `doc.user_data["score"]`. Its model uses the four combinators:

    averaged(featurize >> with_dropout(with_torch(torch MLP)) >> resizable(with_torch(Linear)))

`nlp.update(drop=...)` reaches the dropout, `use_averages` evaluates with the EMA, and
`nlp.to_disk` / `spacy.load` keep the torch weights (no pickle). Runs in a few seconds on CPU:
`.venv/bin/python examples/custom_component.py`.
"""

import random
import tempfile
from typing import Callable, Iterable, List, Optional, Tuple

import numpy
import spacy
import torch
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example
from spacy.vocab import Vocab
from thinc.api import Model, chain, fix_random_seed, list2ragged, reduce_mean, with_array
from thinc.types import Floats2d

from torchlayers import averaged, resizable, use_averages, with_dropout, with_torch

SUNNY = {"sun": 1.0, "warm": 0.5, "bright": 0.8, "rain": -1.0, "cold": -0.5, "grey": -0.8}
FILLER = ["the", "day", "was", "very", "quite", "and", "a", "bit", "today", "sky"]


@spacy.registry.architectures("custom_component.DocRegressor.v1")
def doc_regressor(width: int = 32, rows: int = 500, dropout: float = 0.1) -> Model:
    """docs -> hashed word embeddings (Thinc) -> mean -> torch MLP -> torch Linear(width, 1)."""
    from spacy.ml.featureextractor import FeatureExtractor
    from thinc.api import HashEmbed

    embed = chain(
        FeatureExtractor(["NORM"]),
        list2ragged(),
        with_array(HashEmbed(nO=width, nV=rows, column=0)),
        reduce_mean(),
    )
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh())
    head = with_torch(lambda nI, nO: torch.nn.Linear(nI, nO))
    head.set_dim("nO", 1)
    model = averaged(chain(embed, with_dropout(with_torch(mlp), dropout), resizable(head)))
    return model


class DocScore(TrainablePipe):
    """Predicts `doc.user_data["score"]` with a squared-error loss."""

    def __init__(self, vocab: Vocab, model: Model, name: str = "doc_score") -> None:
        self.vocab, self.model, self.name, self.cfg = vocab, model, name, {}

    def predict(self, docs: Iterable[Doc]) -> Floats2d:
        return self.model.predict(list(docs))

    def set_annotations(self, docs: Iterable[Doc], scores: Floats2d) -> None:
        for doc, score in zip(docs, scores):
            doc.user_data["score"] = float(score[0])

    def get_loss(self, examples: Iterable[Example], scores: Floats2d) -> Tuple[float, Floats2d]:
        truth = self.model.ops.asarray2f([[eg.reference.user_data["score"]] for eg in examples])
        d_scores = scores - truth
        return float((d_scores**2).mean()), d_scores

    def initialize(
        self, get_examples: Callable[[], Iterable[Example]], *, nlp: Optional[Language] = None
    ) -> None:
        sample = list(get_examples())[:10]
        self.model.initialize(X=[eg.predicted for eg in sample])


DEFAULT_MODEL = {"@architectures": "custom_component.DocRegressor.v1"}


@Language.factory("doc_score", default_config={"model": DEFAULT_MODEL})
def make_doc_score(nlp: Language, name: str, model: Model) -> DocScore:
    return DocScore(nlp.vocab, model, name)


def make_examples(nlp: Language, n: int, seed: int) -> List[Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        words = rng.sample(list(SUNNY), 2) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        reference = nlp.make_doc(" ".join(words))
        reference.user_data["score"] = sum(SUNNY.get(word, 0.0) for word in words)
        examples.append(Example(nlp.make_doc(reference.text), reference))
    return examples


def mean_error(nlp: Language, examples: List[Example]) -> float:
    docs = nlp.pipe(eg.reference.text for eg in examples)
    gold = [eg.reference.user_data["score"] for eg in examples]
    return float(numpy.mean([abs(doc.user_data["score"] - y) for doc, y in zip(docs, gold)]))


def main() -> None:
    fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("doc_score")
    train, dev = make_examples(nlp, 200, seed=1), make_examples(nlp, 50, seed=2)
    optimizer = nlp.initialize(lambda: train)
    print(f"mean abs error before training: {mean_error(nlp, dev):.3f}")
    for _ in range(15):
        losses: dict = {}
        for i in range(0, len(train), 20):
            nlp.update(train[i : i + 20], sgd=optimizer, drop=0.1, losses=losses)
    live = mean_error(nlp, dev)
    with use_averages(nlp.get_pipe("doc_score").model):
        ema = mean_error(nlp, dev)
    print(f"after training: {live:.3f} live, {ema:.3f} with the EMA (use_averages)")
    assert live < 0.5, live

    with tempfile.TemporaryDirectory() as path:
        nlp.to_disk(path)
        loaded = spacy.load(path)
    text = "the sun was warm today"
    assert loaded(text).user_data["score"] == nlp(text).user_data["score"]
    print(f"saved and loaded: {text!r} -> {loaded(text).user_data['score']:.3f} (identical)")


if __name__ == "__main__":
    main()
