"""`torch_ner`: a spaCy entity recognizer whose whole model is torch, through the combinators.

The model (`torchlayers.TorchNER.v1`) scores every BILUO tag of every token; decoding is a
Viterbi pass over the transitions BILUO allows (plus learned ones, with `transitions = true`),
so the output is always a valid tag sequence and becomes `doc.ents`. `add_label` works before
and after training: after, the new type's four tags are new output units that start far below
the old ones, so every old entity stays as it was until the new type is trained.

Loss: softmax cross-entropy per token against the gold BILUO tags of `Example.get_aligned_ner`
(spaCy's `ner` alignment; missing annotation, None or "-", gives no gradient), or with
`transitions = true` the CRF's negative log-likelihood. The CRF is a `with_torch` node in the
model: `get_loss` runs it on the scores and calls its backprop, which hands back the gradient of
the scores (returned to spaCy, which backprops it through the rest of the model) and leaves the
transitions' gradient on the node, for the `finish_update` that follows in `update`.
"""

from itertools import islice
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, cast

import numpy
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc
from spacy.training import Example, biluo_tags_to_spans, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import ArgsKwargs, Config, Model, to_numpy
from thinc.types import Floats2d

from . import ner_model  # noqa: F401  registers torchlayers.TorchNER.v1
from .biluo import check_label, tag_names, transition_scores, viterbi

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "torchlayers.TorchNER.v1"
hidden_width = 64
dropout = 0.0
max_decay = 0.999
transitions = false

[model.tok2vec]
@architectures = "spacy.HashEmbedCNN.v2"
pretrained_vectors = null
width = 96
depth = 4
embed_size = 2000
window_size = 1
maxout_pieces = 3
subword_features = true
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]


@Language.factory(
    "torch_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={
        "model": DEFAULT_MODEL,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_torch_ner(
    nlp: Language, name: str, model: Model[List[Doc], List[Floats2d]], scorer: Optional[Callable]
) -> "TorchEntityRecognizer":
    """The `torch_ner` component (see the module docstring)."""
    return TorchEntityRecognizer(nlp.vocab, model, name, scorer=scorer)


class TorchEntityRecognizer(TrainablePipe):
    """Named entities from per-token BILUO scores of a torch model, decoded with Viterbi."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], List[Floats2d]],
        name: str = "torch_ner",
        *,
        scorer: Optional[Callable] = get_ner_prf,
    ) -> None:
        self.vocab = vocab
        self.model = model
        self.name = name
        self.cfg: Dict[str, Any] = {"labels": []}
        self.scorer = scorer

    @property
    def labels(self) -> Tuple[str, ...]:
        """The entity types, in the order they were added (their tags' order)."""
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> List[str]:
        """What `spacy init labels` saves and `initialize(labels=...)` takes."""
        return list(self.labels)

    @property
    def tags(self) -> List[str]:
        """`O`, then B-, I-, L-, U- of each entity type: the model's output units, in order."""
        return tag_names(self.labels)

    def predict(self, docs: Iterable[Doc]) -> List[numpy.ndarray]:
        """The best valid BILUO sequence of each doc, as tag indices."""
        docs = list(docs)
        if not any(len(doc) for doc in docs):
            return [numpy.zeros((len(doc),), dtype="i") for doc in docs]
        return self.decode(self.model.predict(docs))

    def decode(self, scores: Sequence[Floats2d]) -> List[numpy.ndarray]:
        """Viterbi over the model's scores, with the CRF's transitions where there is one."""
        arrays = [to_numpy(doc_scores) for doc_scores in scores]
        width = len(self.tags)
        for doc_scores in arrays:
            if doc_scores.shape[1] != width:
                raise ValueError(
                    f"{self.name}: expected {width} scores per token ({len(self.labels)} entity "
                    f"types), got {doc_scores.shape[1]}: was the model resized with add_label?"
                )
            if not numpy.isfinite(doc_scores).all():
                raise ValueError(f"{self.name}: the model gave non-finite scores (nan or inf)")
        trans, start, end = transition_scores(len(self.labels), self._learned_transitions())
        return viterbi(arrays, trans, start, end)

    def set_annotations(self, docs: Iterable[Doc], tag_ids: Sequence[numpy.ndarray]) -> None:
        """Write each doc's decoded entities to `doc.ents` (other tokens become O)."""
        names = self.tags
        for doc, ids in zip(docs, tag_ids):
            doc.ents = biluo_tags_to_spans(doc, [names[i] for i in ids])

    def get_loss(
        self, examples: Iterable[Example], scores: Sequence[Floats2d]
    ) -> Tuple[float, List[Floats2d]]:
        """The loss and its gradient w.r.t. the scores, from the gold entities.

        Tokens without annotation (None or "-" in `get_aligned_ner`) get no gradient. With
        `transitions = true` this also runs the CRF's backprop: its transitions' gradient
        waits on the CRF node for the next `finish_update`.
        """
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.get_loss")
        index = {tag: i for i, tag in enumerate(self.tags)}
        gold = [self._gold_ids(eg, index) for eg in examples]
        ops = self.model.ops
        if self.model.has_ref("crf"):
            return self._crf_loss(scores, gold)
        loss = 0.0
        d_scores = []
        for doc_scores, ids in zip(scores, gold):
            doc_loss, d = softmax_loss(to_numpy(doc_scores), ids)
            loss += doc_loss
            d_scores.append(ops.asarray2f(cast(Floats2d, d)))
        return loss, d_scores

    def _crf_loss(
        self, scores: Sequence[Floats2d], gold: List[numpy.ndarray]
    ) -> Tuple[float, List[Floats2d]]:
        """Pad, run the CRF node with its backprop, unpad the scores' gradient."""
        arrays = [to_numpy(doc_scores) for doc_scores in scores]
        width = len(self.tags)
        d_scores = [numpy.zeros_like(a) for a in arrays]
        used = [i for i, a in enumerate(arrays) if len(a)]
        if not used:
            return 0.0, [self.model.ops.asarray2f(d) for d in d_scores]
        length = max(len(arrays[i]) for i in used)
        emissions = numpy.zeros((len(used), length, width), dtype="f")
        allowed = numpy.zeros((len(used), length, width), dtype=bool)
        mask = numpy.zeros((len(used), length), dtype=bool)
        for row, i in enumerate(used):
            n = len(arrays[i])
            emissions[row, :n] = arrays[i]
            mask[row, :n] = True
            ids = gold[i]
            allowed[row, :n] = ids[:, None] < 0  # missing: every tag
            known = numpy.nonzero(ids >= 0)[0]
            allowed[row, known, ids[ids >= 0]] = True
        crf = self.model.get_ref("crf")
        xp = self.model.ops.xp  # cupy on GPU
        inputs = tuple(xp.asarray(a) for a in (emissions, allowed, mask))
        loss, backprop = crf(ArgsKwargs(args=inputs, kwargs={}), is_train=True)
        d_inputs = backprop(xp.ones_like(loss))
        d_emissions = to_numpy(d_inputs.args[0])
        for row, i in enumerate(used):
            d_scores[i] = d_emissions[row, : len(arrays[i])]
        return float(loss), [self.model.ops.asarray2f(d) for d in d_scores]

    def _gold_ids(self, example: Example, index: Dict[str, int]) -> numpy.ndarray:
        """Gold tag index per predicted token; -1 where the annotation is missing."""
        ids = numpy.full((len(example.predicted),), -1, dtype="i")
        for i, tag in enumerate(example.get_aligned_ner()):
            if tag is None or tag == "-":
                continue
            if tag not in index:
                label = tag.split("-", 1)[-1]
                raise ValueError(
                    f"{self.name}: the gold entity type {label!r} is not one of this "
                    f"component's types {list(self.labels)}; add it with add_label first"
                )
            ids[i] = index[tag]
        return ids

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Iterable[str]] = None,
    ) -> None:
        """Add the entity types (`labels`, or those in the examples' gold entities, sorted),
        then build the model on a sample of the examples' docs."""
        validate_get_examples(get_examples, f"{type(self).__name__}.initialize")
        if labels is None:
            found = {ent.label_ for eg in get_examples() for ent in eg.reference.ents}
            labels = sorted(found)
        for label in labels:
            self.add_label(label)
        if not self.labels:
            raise ValueError(
                f"{self.name}: no entity types: the examples have no gold entities and no "
                "labels were given (initialize(labels=[...]) or add_label)"
            )
        self.set_output(len(self.tags))
        docs = [eg.predicted for eg in islice(get_examples(), 10)]
        if not docs:
            raise ValueError(f"{self.name}: initialize needs at least one example")
        self.model.initialize(X=docs)

    def add_label(self, label: str) -> int:
        """Add an entity type; 0 if it is there already, else 1.

        Grows the model by the type's four tags (also after training: their scores start
        far below the old tags', so old entities stay as they were until it is trained).
        """
        check_label(self.name, label)
        if label in self.labels:
            return 0
        self.cfg["labels"].append(label)
        self.set_output(len(self.tags))
        self.vocab.strings.add(label)
        return 1

    def _learned_transitions(self) -> Optional[numpy.ndarray]:
        """The CRF's (n+1, n+1) transition matrix (its averages inside use_params), or None."""
        if not self.model.has_ref("crf"):
            return None
        return to_numpy(self.model.get_ref("transitions").get_param("transitions.weight"))


def softmax_loss(scores: numpy.ndarray, ids: numpy.ndarray) -> Tuple[float, numpy.ndarray]:
    """Cross-entropy of the softmax of each row against its gold tag, and its gradient
    `softmax - one_hot` (spaCy's tagger, unnormalised); rows with id -1 count for nothing."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - numpy.log(numpy.exp(shifted).sum(axis=1, keepdims=True))
    rows = numpy.nonzero(ids >= 0)[0]
    d = numpy.exp(log_probs)
    d[rows, ids[rows]] -= 1
    d[ids < 0] = 0
    return float(-log_probs[rows, ids[rows]].sum()), d
