"""`torchlayers.ShardedCorpus.v1`: spaCy's `spacy.Corpus.v1`, one shard per rank (M2).

Example i of the corpus goes to rank `i % world_size`. The rank and world size are read when
the corpus is iterated, from the default torch.distributed group: where none is initialized
(plain `spacy train`, and `python -m torchlayers train` while it initializes the pipeline,
so that every rank sees every label) the corpus is whole.
"""

from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

from spacy.language import Language
from spacy.training import Corpus, Example
from spacy.util import registry

from ..distributed import rank_and_world_size


@registry.readers("torchlayers.ShardedCorpus.v1")
def create_sharded_corpus(
    path: Optional[Path],
    gold_preproc: bool = False,
    max_length: int = 0,
    limit: int = 0,
    augmenter: Optional[Callable] = None,
) -> Callable[[Language], Iterable[Example]]:
    """Read DocBin files like `spacy.Corpus.v1` (same settings); keep this rank's examples.

    limit: applies to the whole corpus, before sharding. max_length splits long docs into
    sentences before sharding too, so the shards count examples, not files.
    """
    if path is None:
        raise ValueError("torchlayers.ShardedCorpus.v1: expected a path to .spacy data, got None")
    corpus = Corpus(
        path, gold_preproc=gold_preproc, max_length=max_length, limit=limit, augmenter=augmenter
    )
    return ShardedCorpus(corpus)


class ShardedCorpus:
    """Every `world_size`-th example of `corpus`, starting at this rank's."""

    def __init__(self, corpus: Union[Corpus, Callable[[Language], Iterable[Example]]]) -> None:
        self.corpus = corpus

    def __call__(self, nlp: Language) -> Iterator[Example]:
        rank, world = rank_and_world_size()
        for i, example in enumerate(self.corpus(nlp)):
            if i % world == rank:
                yield example
