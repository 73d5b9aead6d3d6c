"""A workflow with LangChain's Chroma vector store (`langchain-chroma`, pinned in
requirements-clients.txt), written out as a JSON transcript like workflow.py's.

Run once against Chroma directly and once through the proxy (tests/clients.rs): the two
transcripts must be equal. Embeddings come from langchain_core's DeterministicFakeEmbedding
(a hash of the text, the same on every run), so no model is loaded.

Usage: langchain_workflow.py --url http://127.0.0.1:PORT --out FILE
"""

from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from client_args import client_for, url_parser
from workflow import Transcript

DIMENSIONS = 16
TEXTS = [
    ("a", "alpha apples grow in the orchard", {"kind": "fruit", "rank": 1}),
    ("b", "bravo bananas ripen in the sun", {"kind": "fruit", "rank": 2}),
    ("c", "charlie carrots grow under ground", {"kind": "vegetable", "rank": 3}),
    ("d", "delta dates are sweet and dry", {"kind": "fruit", "rank": 4}),
    ("e", "echo eggplants are purple", {"kind": "vegetable", "rank": 5}),
]


def documents(found):
    """Documents (with their scores when given) as plain data."""
    out = []
    for item in found:
        doc, score = item if isinstance(item, tuple) else (item, None)
        entry = {"id": doc.id, "text": doc.page_content, "metadata": doc.metadata}
        if score is not None:
            entry["score"] = score
        out.append(entry)
    return out


def main():
    args = url_parser("--out").parse_args()
    transcript = Transcript()
    step = transcript.step

    client = client_for(args.url)
    embeddings = DeterministicFakeEmbedding(size=DIMENSIONS)
    store = {}

    def create():
        store["docs"] = Chroma(
            collection_name="langchain-docs",
            embedding_function=embeddings,
            client=client,
            collection_metadata={"hnsw:space": "cosine", "source": "langchain"},
        )
        collection = store["docs"]._collection
        return {"id": collection.id, "name": collection.name, "metadata": collection.metadata}

    step("create_collection", create)
    docs = store["docs"]
    step(
        "add_texts",
        lambda: docs.add_texts(
            texts=[text for _, text, _ in TEXTS],
            metadatas=[meta for _, _, meta in TEXTS],
            ids=[id_ for id_, _, _ in TEXTS],
        ),
    )
    step(
        "add_documents",
        lambda: docs.add_documents(
            [Document(page_content="foxtrot figs are soft", metadata={"kind": "fruit", "rank": 6}, id="f")]
        ),
    )
    step("count", lambda: docs._collection.count())
    step("similarity_search", lambda: documents(docs.similarity_search("apples in the orchard", k=3)))
    step(
        "similarity_search_with_score",
        lambda: documents(docs.similarity_search_with_score("sweet fruit", k=3)),
    )
    step(
        "similarity_search_filtered",
        lambda: documents(
            docs.similarity_search("purple vegetable", k=2, filter={"kind": "vegetable"})
        ),
    )
    step(
        "similarity_search_with_relevance_scores",
        lambda: documents(docs.similarity_search_with_relevance_scores("bananas", k=2)),
    )
    step(
        "max_marginal_relevance_search",
        lambda: documents(docs.max_marginal_relevance_search("fruit", k=2, fetch_k=4)),
    )
    step("get_where", lambda: docs.get(where={"kind": "fruit"}, include=["documents", "metadatas"]))
    step(
        "get_where_and",
        lambda: docs.get(
            where={"$and": [{"kind": "fruit"}, {"rank": {"$gte": 2}}]}, include=["metadatas"]
        ),
    )
    step("get_by_ids", lambda: documents(docs.get_by_ids(["b", "e"])))
    step(
        "update_document",
        lambda: docs.update_document(
            "b", Document(page_content="bravo blueberries", metadata={"kind": "berry", "rank": 20})
        ),
    )
    step(
        "update_documents",
        lambda: docs.update_documents(
            ["c", "d"],
            [
                Document(page_content="charlie cabbages", metadata={"kind": "vegetable", "rank": 30}),
                Document(page_content="delta dragonfruit", metadata={"kind": "fruit", "rank": 40}),
            ],
        ),
    )
    step(
        "get_after_update",
        lambda: docs.get(ids=["b", "c", "d"], include=["documents", "metadatas", "embeddings"]),
    )
    step("delete", lambda: docs.delete(ids=["a", "e"]))
    step("count_after_delete", lambda: docs._collection.count())
    step("get_all", lambda: docs.get(include=["documents", "metadatas"]))

    def scratch():
        # A second store built the usual way (from_texts), then dropped.
        other = Chroma.from_texts(
            ["a note to drop"], embeddings, ids=["n"], collection_name="langchain-scratch", client=client
        )
        count = other._collection.count()
        other.delete_collection()
        return {"count": count, "names": sorted(c.name for c in client.list_collections())}

    step("from_texts_and_delete_collection", scratch)

    transcript.write(args.out)


if __name__ == "__main__":
    main()
