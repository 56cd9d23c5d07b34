"""kindling.embeddings: word-vector tables in Redis (or a local directory), looked up
in-process by the runtime or over HTTP by anyone else.

    from kindling.embeddings import EmbeddingSettings, EmbeddingStore

    store = EmbeddingStore.from_settings(EmbeddingSettings.from_env(), registry)
    result = store.lookup("word2vec", ["the", "cat"])  # .vectors, .oov, .version
"""

from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore, LookupResult
from kindling.embeddings.tables import TableMeta, TableNotFound

__all__ = ["EmbeddingSettings", "EmbeddingStore", "LookupResult", "TableMeta", "TableNotFound"]
