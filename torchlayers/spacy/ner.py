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

`annotated_types` (N5): examples that annotate only some types. A gold O then means "none of
these types", and what else the token is comes from a teacher, a frozen copy of the model taken
at the first update with the setting (targets in `_ner_teacher.py`). `rehearse` uses the same
targets against the copy `nlp.resume_training()` takes. See docs/torch_ner.md.
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
from thinc.api import ArgsKwargs, Config, Model, Optimizer, set_dropout_rate, to_numpy
from thinc.types import Floats2d

from . import ner_model  # noqa: F401  registers torchlayers.TorchNER.v1
from ._ner_teacher import annotated_columns, row_weights, soft_loss, soft_targets, teacher_ids
from ._registry import register
from .biluo import check_label, tag_names, transition_scores, viterbi

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "torchlayers.TorchNER.v1"
hidden_width = 64
dropout = 0.0
max_decay = null
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
Teaching = Tuple[List[numpy.ndarray], Optional[numpy.ndarray]]  # a teacher's scores, transitions
EMPTY = numpy.zeros((0,), dtype="i")  # no banned tags


@Language.factory(
    "torch_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={
        "model": DEFAULT_MODEL,
        "annotated_types": None,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_torch_ner(
    nlp: Language,
    name: str,
    model: Model[List[Doc], List[Floats2d]],
    annotated_types: Optional[List[str]],
    scorer: Optional[Callable],
) -> "TorchEntityRecognizer":
    """The `torch_ner` component (see the module docstring).

    annotated_types: the entity types the training examples annotate (N5); None: every type.
    """
    return TorchEntityRecognizer(
        nlp.vocab, model, name, annotated_types=annotated_types, scorer=scorer
    )


def make_annotated_types(component: str, types: List[str]) -> Callable[[Language], Language]:
    """An `[initialize.after_init]` callback: add `types` to the `torch_ner` named `component`
    and set its `annotated_types` to them (N5 from `spacy train`).

    Registered as `torchlayers.annotated_types.v1` (spaCy `callbacks`). It is the way for a
    component sourced from a trained pipeline (`source = "..."`), whose factory settings come
    from the source and which spaCy does not initialize again:

        [initialize.after_init]
        @callbacks = "torchlayers.annotated_types.v1"
        component = "ner"
        types = ["company"]
    """

    def set_types(nlp: Language) -> Language:
        ner = nlp.get_pipe(component)
        if not isinstance(ner, TorchEntityRecognizer):
            raise ValueError(f"torchlayers.annotated_types.v1: {component!r} is not a torch_ner")
        for label in types:
            ner.add_label(label)
        ner.annotated_types = types
        return nlp

    return set_types


class TorchEntityRecognizer(TrainablePipe):
    """Named entities from per-token BILUO scores of a torch model, decoded with Viterbi."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], List[Floats2d]],
        name: str = "torch_ner",
        *,
        annotated_types: Optional[Sequence[str]] = None,
        scorer: Optional[Callable] = get_ner_prf,
    ) -> None:
        self.vocab = vocab
        self.model = model
        self.name = name
        self.cfg: Dict[str, Any] = {"labels": []}
        self.scorer = scorer
        self._annotated: Optional[Tuple[str, ...]] = None
        self._teacher: Optional[Model] = None  # N5: the frozen copy, taken at the next update
        self._rehearsal_model: Optional[Model] = None  # set by nlp.resume_training()
        self._last_optimizer: Optional[Optimizer] = None  # whose averages a teacher takes
        self.annotated_types = annotated_types

    @property
    def annotated_types(self) -> Optional[Tuple[str, ...]]:
        """The entity types the training examples annotate (N5); None: every type.

        With it set, a gold `O` means "none of these types": what else such a token is comes
        from a frozen copy of the model taken at the next `update` (see `_ner_teacher`).
        Setting it (to a new value) retires that copy.
        """
        return self._annotated

    @annotated_types.setter
    def annotated_types(self, value: Optional[Sequence[str]]) -> None:
        annotated = self._check_annotated(value, know_labels=bool(self.labels))
        if annotated != self._annotated:
            self._teacher = None
        self._annotated = annotated

    def _check_annotated(
        self, value: Optional[Sequence[str]], know_labels: bool = True
    ) -> Optional[Tuple[str, ...]]:
        """`value` as a tuple of this component's types, or ValueError naming what is wrong.

        know_labels: check that they are types of this component (not while a config builds
            the component: the types are added at initialize).
        """
        if value is None:
            return None
        where = f"{self.name}: annotated_types"
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list of entity types or None, got {value!r}")
        if not value:
            raise ValueError(f"{where} must name at least one type (None: every type), got []")
        for label in value:
            if not isinstance(label, str):
                raise ValueError(f"{where}: an entity type must be a str, got {label!r}")
            if know_labels and label not in self.labels:
                raise ValueError(
                    f"{where}: {label!r} is not one of this component's types "
                    f"{list(self.labels)}; add it with add_label first"
                )
        return tuple(value)

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

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """spaCy's update; with `annotated_types` set, the first one takes the teacher: the
        model as it is now, with the averages of the optimizer that trained it last swapped
        in (what spaCy evaluates and saves), if it keeps any."""
        if self.annotated_types is not None and self._teacher is None:
            self._teacher = self._snapshot(sgd if sgd not in (None, False) else None)
        return super().update(examples, drop=drop, sgd=sgd, losses=losses)

    def finish_update(self, sgd: Optimizer) -> None:
        """spaCy's; notes the optimizer (`Language.update` passes it here, not to `update`)."""
        self._last_optimizer = sgd
        super().finish_update(sgd)

    def get_loss(
        self, examples: Iterable[Example], scores: Sequence[Floats2d]
    ) -> Tuple[float, List[Floats2d]]:
        """The loss and its gradient w.r.t. the scores, from the gold entities.

        Tokens without annotation (None or "-" in `get_aligned_ner`) get no gradient. With
        `transitions = true` this also runs the CRF's backprop: its transitions' gradient
        waits on the CRF node for the next `finish_update`. With `annotated_types` set, a gold
        `O` gets the teacher's targets for the other types (one more forward pass, N5).
        """
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.get_loss")
        index = {tag: i for i, tag in enumerate(self.tags)}
        gold = [self._gold_ids(eg, index) for eg in examples]
        annotated = self._check_annotated(self.annotated_types)  # may have been set early
        if annotated is None:
            return self._loss(scores, gold, None, EMPTY)
        if self._teacher is None:  # get_loss outside update: the model as it is now
            self._teacher = self._snapshot()
        docs = [eg.predicted for eg in examples]
        banned = annotated_columns(self.labels, annotated)
        return self._loss(scores, gold, self._teacher_scores(self._teacher, docs), banned)

    def rehearse(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Pull the model toward the copy `nlp.resume_training()` took, on the examples' docs
        (their annotation is not read): the copy's softmax as soft targets at every token, or
        with `transitions = true` its best path as the gold path (spaCy's `Language.rehearse`).
        """
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.rehearse")
        if self._rehearsal_model is None:
            raise ValueError(
                f"{self.name}: nothing to rehearse against: call nlp.resume_training() first "
                "(it copies the model as it is, the teacher that rehearse keeps it close to)"
            )
        docs = [eg.predicted for eg in examples]
        if not any(len(doc) for doc in docs):
            return losses
        set_dropout_rate(self.model, drop)
        scores, backprop = self.model.begin_update(docs)
        teacher = self._teacher_scores(self._rehearsal_model, docs)
        unknown = [numpy.zeros((len(doc),), dtype="i") for doc in docs]  # no gold: teacher's
        loss, d_scores = self._loss(scores, unknown, teacher, EMPTY)
        backprop(d_scores)
        if sgd not in (None, False):
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def _loss(
        self,
        scores: Sequence[Floats2d],
        gold: List[numpy.ndarray],
        teacher: Optional[Teaching],
        banned: numpy.ndarray,
    ) -> Tuple[float, List[Floats2d]]:
        """Per-token or CRF loss against gold ids; with a teacher's (scores, transitions),
        its targets where the gold says O (not the `banned` tags)."""
        ops = self.model.ops
        if self.model.has_ref("crf"):
            if teacher is not None:
                trans = transition_scores(len(self.labels), teacher[1])
                gold = teacher_ids(teacher[0], gold, banned, trans)
            return self._crf_loss(scores, gold)
        loss = 0.0
        d_scores = []
        for i, (doc_scores, ids) in enumerate(zip(scores, gold)):
            if teacher is None:
                doc_loss, d = softmax_loss(to_numpy(doc_scores), ids)
            else:
                targets = soft_targets(teacher[0][i], ids, banned)
                doc_loss, d = soft_loss(to_numpy(doc_scores), targets, row_weights(ids))
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

    def _snapshot(self, optimizer: Optional[Optimizer] = None) -> Model:
        """A frozen copy of the model, the teacher: with the averages of `optimizer` (or of the
        one that last updated the model) swapped in, where it keeps any."""
        optimizer = optimizer if optimizer is not None else self._last_optimizer
        with self.model.use_params(getattr(optimizer, "averages", None) or {}):
            return self.model.copy()  # Layer._copy keeps the "crf" ref

    def _teacher_scores(self, teacher: Model, docs: List[Doc]) -> Teaching:
        """The teacher's scores of `docs` (one prediction) and its learned transitions."""
        scores = [to_numpy(doc_scores) for doc_scores in teacher.predict(docs)]
        for doc_scores in scores:
            if doc_scores.shape[1] != len(self.tags):
                raise ValueError(
                    f"{self.name}: the teacher gives {doc_scores.shape[1]} scores per token, "
                    f"the model {len(self.tags)}: was it resized without add_label?"
                )
        return scores, learned_transitions(teacher)

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Iterable[str]] = None,
    ) -> None:
        """Add the entity types (`labels`, or those in the examples' gold entities, sorted),
        then build the model on a sample of the examples' docs.

        No types at all (N6, as spaCy's `ner`): the model has one output, `O`, predicts no
        entities, and grows with `add_label` later.
        """
        validate_get_examples(get_examples, f"{type(self).__name__}.initialize")
        if labels is None:
            found = {ent.label_ for eg in get_examples() for ent in eg.reference.ents}
            labels = sorted(found)
        for label in labels:
            self.add_label(label)
        self._check_annotated(self.annotated_types)  # a config may name them before they exist
        self.set_output(len(self.tags))
        docs = [eg.predicted for eg in islice(get_examples(), 10)]
        if not docs:
            raise ValueError(f"{self.name}: initialize needs at least one example")
        self.model.initialize(X=docs)
        self._teacher = None  # it was a copy of other weights

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
        for teacher in (self._teacher, self._rehearsal_model):
            if isinstance(teacher, Model):  # grown alike: it predicts the new type nowhere
                teacher.attrs["resize_output"](teacher, len(self.tags))
        self.vocab.strings.add(label)
        return 1

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> Any:
        """spaCy's; a teacher taken before (N5) belonged to other weights: it retires."""
        self._teacher = None
        return super().from_bytes(bytes_data, exclude=exclude)

    def from_disk(self, path: Any, *, exclude: Iterable[str] = tuple()) -> Any:
        """spaCy's; a teacher taken before (N5) belonged to other weights: it retires."""
        self._teacher = None
        return super().from_disk(path, exclude=exclude)

    def _learned_transitions(self) -> Optional[numpy.ndarray]:
        """The CRF's (n+1, n+1) transition matrix (its averages inside use_params), or None."""
        return learned_transitions(self.model)


def learned_transitions(model: Model) -> Optional[numpy.ndarray]:
    """The (n+1, n+1) transition matrix of a TorchNER model's CRF, or None without one."""
    if not model.has_ref("crf"):
        return None
    return to_numpy(model.get_ref("transitions").get_param("transitions.weight"))


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


register("callbacks", {"torchlayers.annotated_types.v1": make_annotated_types})
