"""CLI: ``python -m decomp.train --workdir DIR [--config NAME_OR_FILE] [--set key=value ...]``.

Runs (or resumes) ``decomp.train.train``. Multi-host: start one process per host with
``--coordinator HOST:PORT --num-processes N --process-id I`` (``jax.distributed``).

A named error (a bad config, missing data, a diverged run, a locked workdir, a corrupt
checkpoint, a full disk, ...) prints one ``error: <message>`` line and exits with status 2; a
traceback means a bug (``--debug`` shows the traceback of named errors too). Ctrl-C at any moment
prints one ``interrupted: ...`` line and exits with status 130; the same command resumes.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from decomp.train.errors import report_error, user_errors


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m decomp.train',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='run directory (created; resumed if it '
                      'holds checkpoints)')
  parser.add_argument('--config', default='playground',
                      help='a named config (playground, playground_quick, '
                      'playground_multimodal, qwen3_reranker_lora, gmr_lora) or a .py/.json file')
  parser.add_argument('--set', dest='overrides', action='append', default=[], nargs='+',
                      metavar='KEY=VALUE', help='override config keys, e.g. --set steps=100 '
                      'weight=cl mesh.data=4')
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  parser.add_argument('--allow-code', action='store_true',
                      help='run objective code a --config .json (a received workdir\'s '
                      'config.json) names outside the installed packages (docs/trust.md)')
  parser.add_argument('--debug', action='store_true',
                      help='show the traceback of named errors too')
  parser.add_argument('--coordinator', help='jax.distributed coordinator address HOST:PORT')
  parser.add_argument('--num-processes', type=int, help='jax.distributed process count')
  parser.add_argument('--process-id', type=int, help='jax.distributed process id')
  parser.add_argument('--cpu-collectives', default=None,
                      help='CPU collectives implementation for multi-process CPU runs (gloo)')
  return parser.parse_args(argv)


# A write failed for want of room or permission: the user's to fix (the run resumes once fixed).
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def _report_disk(error: OSError) -> int:
  where = f'could not write {error.filename}' if error.filename else 'a write failed'
  print(f'error: {where}: {error.strerror}. Is the disk full, the workdir unwritable or a '
        'file-size limit (ulimit -f) reached? The last checkpoint is kept: rerun the same '
        'command to resume', file=sys.stderr)
  return 2


def main(argv=None) -> int:
  args = parse_args(argv)
  from decomp.train import interrupt
  with interrupt.handling_sigint():
    try:
      return _main(args)
    except user_errors() as e:
      if args.debug:
        raise
      return report_error(e)
    except OSError as e:
      if args.debug or e.errno not in _DISK_ERRNOS:
        raise
      return _report_disk(e)


def _main(args: argparse.Namespace) -> int:
  import jax
  if os.environ.get('DECOMP_COMPILATION_CACHE'):
    # Runs of a sweep compile the same programs: later runs load them (the same executables, so
    # the same numbers) instead of compiling again.
    jax.config.update('jax_compilation_cache_dir', os.environ['DECOMP_COMPILATION_CACHE'])
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:  # the user's setting wins
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  if args.coordinator:
    if args.cpu_collectives:
      jax.config.update('jax_cpu_collectives_implementation', args.cpu_collectives)
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)
  from decomp.train import overrides as overrides_lib
  from decomp.train import recipes
  from decomp.train.loop import train
  overrides = [item for group in args.overrides for item in group]
  if args.config.endswith('.json') and os.path.isfile(args.config):
    from decomp import trust
    from decomp.train import logs
    trust.check_trusted_import_paths(logs.read_json(args.config), allow_code=args.allow_code)
  if args.quiet:
    overrides.append('quiet=true')
  try:
    cfg = overrides_lib.apply_overrides(recipes.get_config(args.config), overrides)
  except TypeError as e:  # e.g. a config file whose get_config() returns something else
    if args.debug:
      raise
    return report_error(e)
  results = train(cfg, args.workdir)
  if jax.process_index() == 0:
    summary = {'workdir': os.path.abspath(args.workdir), 'steps': results['steps'],
               'final_loss': results['final'].get('loss'),
               'test_ndcg@10': results['test'].get('ndcg@10')}
    print(json.dumps(summary))
  return 0


if __name__ == '__main__':
  try:
    status = main()
  except KeyboardInterrupt as e:  # Ctrl-C: one line, exit 130 (decomp.train.interrupt)
    from decomp.train import interrupt
    interrupt.exit_interrupted(e)
  sys.exit(status)
