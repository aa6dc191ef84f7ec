"""The accelerator benchmark runs at a tiny size on CPU, so the one-command GPU/TPU measurement
cannot rot: it reports FLOPs, timings and memory for the one-pass and the chunked step."""

from benchmarks import accelerator


def test_tiny_accelerator_benchmark_runs(capsys):
  rows = accelerator.main(['--shape', 'tiny', '--groups', '2', '--list-size', '8', '--length',
                           '16', '--doc-chunk', '0', '2', '--steps', '1', '--dtype', 'float32'])
  assert [r['doc_chunk'] for r in rows] == [0, 2]
  for r in rows:
    assert r['tflops'] > 0 and r['step_s'] > 0 and r['loss'] > 0
  # One forward more for the chunked step, one chunk's activations instead of eight documents'.
  one_pass, chunked = rows
  if one_pass['temp_gib'] is not None:
    assert chunked['temp_gib'] < one_pass['temp_gib']
  assert '| cpu | 2 |' in capsys.readouterr().out
