"""Retrieval metrics on hand-made score matrices, against expectations worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from searchlite.evaluation.metrics import average_precision, first_relevant_ranks, recall_mrr, retrieval_metrics


def test_ranks_with_multiple_relevant_items():
    scores = np.array([[0.9, 0.1, 0.5, 0.3],
                       [0.2, 0.8, 0.7, 0.1],
                       [0.1, 0.2, 0.3, 0.4]])
    # q0: relevant {1, 3}: order is 0,2,3,1 -> best relevant (3) at rank 3
    # q1: relevant {1}: rank 1; q2: relevant {0}: order 3,2,1,0 -> rank 4
    ranks = first_relevant_ranks(scores, [[1, 3], [1], [0]])
    assert ranks.tolist() == [3, 1, 4]
    m = recall_mrr(ranks, ks=(1, 3, 5), mrr_at=3)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["recall@5"] == pytest.approx(1.0)  # k larger than the corpus
    assert m["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 4) / 3)
    assert m["mrr@3"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_ties_are_broken_by_lower_index():
    scores = np.array([[0.5, 0.5, 0.5]])
    assert first_relevant_ranks(scores, [[0]]).tolist() == [1]
    assert first_relevant_ranks(scores, [[2]]).tolist() == [3]
    assert first_relevant_ranks(scores, [[1, 2]]).tolist() == [2]


def test_query_without_relevant_item_is_skipped():
    scores = np.array([[0.1, 0.9], [0.9, 0.1]])
    m = recall_mrr(first_relevant_ranks(scores, [[], [0]]), ks=(1,))
    assert m["recall@1"] == 1.0 and m["queries"] == 1 and m["skipped"] == 1
    empty = recall_mrr(first_relevant_ranks(scores, [[], []]), ks=(1,))
    assert math.isnan(empty["recall@1"])


def test_image_to_text_hit_if_any_caption_in_top_k():
    # 2 images, 4 captions: captions 0,1 describe image 0; 2,3 describe image 1
    t2i = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.8], [0.4, 0.5]])
    i2t = t2i.T  # image 0 ranks captions 0,3,1,2 ; image 1 ranks 2,3,1,0
    m = retrieval_metrics(i2t, [[0, 1], [2, 3]], ks=(1,))
    assert m["recall@1"] == 1.0
    t = retrieval_metrics(t2i, [[0], [0], [1], [1]], ks=(1,))
    assert t["recall@1"] == pytest.approx(3 / 4)  # caption 1 prefers image 1


def test_average_precision():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    # relevant at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2
    assert average_precision(scores, [[0, 2]])[0] == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision(scores, [[]])[0])
