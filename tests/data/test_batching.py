"""pad_groups / batches: padded [B, n] labels and where masks."""

import numpy as np
import pytest

from decomp.data.batching import batches, pad_groups
from decomp.data.types import Group, Item


def _group(qid, labels):
  n = len(labels)
  return Group(query_id=qid, task="t2t", instruction="i", query=Item(text="q"),
               docs=tuple(Item(text=f"d{i}") for i in range(n)), labels=tuple(labels),
               doc_ids=tuple(f"{qid}-{i}" for i in range(n)), doc_kinds=("x",) * n,
               modality="single")


def test_pad_groups_masks_and_padding():
  groups = [_group("a", [0, 1, 0]), _group("b", [1]), _group("c", [0, 0, 2, 1, 0])]
  batch = pad_groups(groups)
  assert batch.shape == (3, 5) and batch.labels.dtype == np.int32 and batch.where.dtype == bool
  np.testing.assert_array_equal(batch.labels, [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                                               [0, 0, 2, 1, 0]])
  np.testing.assert_array_equal(batch.where.sum(-1), [3, 1, 5])
  assert batch.docs[1][0].text == "d0" and batch.docs[1][1:] == (None,) * 4
  assert batch.doc_ids[0] == ("a-0", "a-1", "a-2", "", "")
  assert batch.query_ids == ("a", "b", "c") and batch.tasks == ("t2t",) * 3
  assert pad_groups(groups, list_size=8).shape == (3, 8)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="'c' .* 5 documents, more than list_size=4"):
    pad_groups([_group("a", [1]), _group("c", [1, 0, 0, 0, 0])], list_size=4)
  with pytest.raises(ValueError, match="no groups"):
    pad_groups([])


def test_batches_share_a_list_size():
  groups = [_group(str(i), [1] + [0] * i) for i in range(5)]
  out = list(batches(groups, 2))
  assert [b.shape for b in out] == [(2, 5), (2, 5), (1, 5)]
  assert len(list(batches(groups, 2, drop_remainder=True))) == 2
