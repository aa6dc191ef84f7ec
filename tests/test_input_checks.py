"""Bad inputs of the math core and the data reader get named errors (issue 18, cases 5, 9-11)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decomp import _lists, weights
from decomp.data import mrb
from decomp.losses import cl_loss, sft_loss
from decomp.models.config import DecoderConfig
from decomp.models.vision import VisionConfig
from decomp.readout import Readout
from decomp.url import resolve_weight, url_loss


# --- case 9: label values, where the trainer feeds them (the host, before jit) --------------------

def test_relevance_labels_refuse_what_jit_cannot_check():
  where = np.array([[True, True, True, False]])
  # jit cannot check values: the host check is what holds for the trainer.
  assert float(jax.jit(sft_loss)(jnp.zeros((1, 3)), jnp.zeros((1, 3)),
                                 jnp.array([[0.7, 0.0, 0.0]]))) >= 0
  for bad, shown in ((0.7, '0.7'), (-1, '-1'), (np.nan, 'nan')):
    labels = np.array([[1, bad, 0, 0]], np.float32)
    with pytest.raises(ValueError, match=rf'batch 3: label {shown} at \(0, 1\) is not a '
                       'relevance grade'):
      _lists.relevance_labels(labels, where, context='batch 3: ')
  # Graded relevance is kept (the listwise weights read it; labels > 0 is a positive for the
  # others); padding is ignored and set to 0.
  got = _lists.relevance_labels(np.array([[2, 0, 1, -7]]), where)
  assert got.tolist() == [[2, 0, 1, 0]] and got.dtype == np.int32
  with pytest.raises(ValueError, match='list_size >= 1'):
    _lists.relevance_labels(np.zeros((2, 0)))


# --- case 10: weight parameters are checked where they are bound ----------------------------------

@pytest.mark.parametrize('name, params, error, message', [
    ('cl', {'temperature': 0.0}, ValueError, "weight 'cl': temperature must be > 0, got 0.0"),
    ('cl_rescaled', {'temperature': -1}, ValueError, 'temperature must be > 0'),
    ('cl', {'temperature': float('inf')}, ValueError, 'temperature must be finite'),
    ('cl', {'temperature': 'hot'}, TypeError, "temperature must be a number, got 'hot'"),
    ('tau_mask', {'tau': 5}, ValueError, r"tau must be in \(0, 0.5\], got 5.0"),
    ('tau_mask', {'tau': 0}, ValueError, r'tau must be in \(0, 0.5\]'),
    ('tau_mask', {'tau': 'abc'}, TypeError, "tau must be a number, got 'abc'"),
    ('tau_mask', {'tau': True}, TypeError, 'tau must be a number'),
])
def test_weights_refuse_what_their_loss_refuses(name, params, error, message):
  with pytest.raises(error, match=message):
    resolve_weight(name, **params)
  readout = Readout(yes=jnp.zeros((1, 3)), no=jnp.zeros((1, 3)))
  with pytest.raises(error, match=message):  # the function itself, called directly
    weights.WEIGHTS[name].fn(readout, jnp.array([[1, 0, 0]]), **params)


def test_good_weight_parameters_still_work_under_jit():
  readout = Readout(yes=jnp.zeros((1, 3)), no=jnp.zeros((1, 3)))
  labels = jnp.array([[1, 0, 0]])
  assert resolve_weight('tau_mask', tau=0.5)(readout, labels).tolist() == [[-1.0, 1.0, 1.0]]
  w = jax.jit(lambda t: weights.cl(readout, labels, temperature=t))(0.5)  # traced: not checked
  np.testing.assert_allclose(w, weights.cl(readout, labels, temperature=0.5))


# --- case 11: empty lists and model shapes --------------------------------------------------------

@pytest.mark.parametrize('call', [
    lambda: cl_loss(jnp.zeros((1, 0)), jnp.zeros((1, 0), jnp.int32)),
    lambda: sft_loss(jnp.zeros((1, 0)), jnp.zeros((1, 0)), jnp.zeros((1, 0), jnp.int32)),
    lambda: url_loss(jnp.zeros((1, 0)), jnp.zeros((1, 0)), jnp.zeros((1, 0), jnp.int32),
                     weight='cl', direction='sft'),
    lambda: weights.cl(Readout(yes=jnp.zeros((1, 0)), no=jnp.zeros((1, 0))),
                       jnp.zeros((1, 0), jnp.int32)),
    lambda: jax.jit(cl_loss)(jnp.zeros((1, 0)), jnp.zeros((1, 0), jnp.int32)),
])
def test_empty_lists_are_named(call):
  with pytest.raises(ValueError, match=r'lists are empty \(labels shape \(1, 0\)\)'):
    call()


def test_zero_heads_are_named_not_zero_division():
  hf = {'architectures': ['Qwen2ForCausalLM'], 'model_type': 'qwen2', 'vocab_size': 10,
        'hidden_size': 8, 'intermediate_size': 16, 'num_hidden_layers': 1,
        'num_attention_heads': 0, 'num_key_value_heads': 1}
  with pytest.raises(ValueError, match='num_attention_heads must be a positive int, got 0'):
    DecoderConfig.from_hf(hf)
  for key in ('num_heads', 'patch_size'):
    with pytest.raises(ValueError, match=f'VisionConfig.{key} must be a positive int, got 0'):
      VisionConfig(**{key: 0})


# --- case 5: JSONL that is not UTF-8 --------------------------------------------------------------

def _row(query_id):
  return json.dumps({'query_id': query_id, 'task': 't2t', 'instruction': '',
                     'query': {'text': 'q'}, 'positives': [{'text': 'p'}],
                     'negatives': [{'text': 'n'}]}).encode()


def test_non_utf8_rows_are_named_and_skippable(tmp_path):
  path = tmp_path / 'train.jsonl'
  bad = _row('b').replace(b'"q"', b'"caf\xe9"')  # latin-1, not UTF-8
  path.write_bytes(b'\n'.join([_row('a'), bad, _row('c')]) + b'\n')
  with pytest.raises(ValueError, match=rf'{path}:2: not UTF-8 text \(byte \d+'):
    mrb.load_jsonl(str(path))
  groups, stats = mrb.load_jsonl(str(path), errors='skip')
  assert [g.query_id for g in groups] == ['a', 'c']
  assert (stats.loaded, stats.skipped, dict(stats.reasons)) == (2, 1, {'not utf-8': 1})
  assert stats.messages[0].startswith(f'{path}:2: not UTF-8')
