r"""Objectives as first-class objects: a weight, a direction, and what training needs of them.

An :class:`Objective` is everything the engine knows about a training objective, in one object:

* its **weight** (:class:`~decomp.weights.Weight`: signed :math:`W_i`, and the plain loss it is
  the gradient of) and its **direction** (:class:`~decomp.directions.Direction`: the score
  :math:`f_D` whose gradient is :math:`D`);
* the **loss** it logs as ``loss`` (default: its weight's own loss, so a hybrid logs the loss of
  the objective it takes the weight from);
* the **ranking score** that judges it in evaluation (default: its direction's, the score
  training moves; both scores of :data:`RANK_SCORES` are always logged);
* what its readout **needs** beyond the two label logits (the union of its parts' needs and its
  own: the vocabulary log-normaliser, a projection score, the hidden state, teacher scores).

Built-ins are the entries of :data:`OBJECTIVES` (``"sft"``, ``"cl"`` and the field's
``"listnet"``, ``"listmle"``, ``"ranknet"``, ``"lambdaloss"``, ``"margin_mse"``,
``"hard_infonce"``), of
:data:`decomp.weights.WEIGHTS` and of :data:`decomp.directions.DIRECTIONS`. Anything else is named
by import path, ``"package.module:attribute"``, or registered in code
(:func:`register_objective`, :func:`register_weight`, :func:`register_direction`); every place
that takes an objective (``url_loss``, a training config, a sweep arm) resolves names through
:func:`resolve_objective` / :func:`resolve_weight` / :func:`resolve_direction` and nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from decomp import _lists
from decomp import directions as directions_lib
from decomp import weights as weights_lib
from decomp.directions import Direction
from decomp.readout import READOUT_NEEDS, Readout
from decomp.weights import Weight

Array = Any

# The ranking scores every evaluation computes: name -> ``readout -> [..., n]``. 'sft' ranks by
# the logit of P(yes) = sigmoid(z_y - z_n) (the same order, without saturation), 'cl' by z_y.
RANK_SCORES: dict[str, Callable[[Readout], Array]] = {
    "sft": directions_lib.sft,
    "cl": directions_lib.cl,
}


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: used as jax callables
class Objective:
  """A training objective: one weight x one direction, with what it logs, ranks by and needs.

  Attributes:
    weight: a :class:`~decomp.weights.Weight`, a registered weight name, an import path or a bare
      weight function (``(readout, labels, *, where) -> [..., n]``).
    direction: a :class:`~decomp.directions.Direction`, a name, an import path or a bare
      direction function (``readout -> [..., n]``).
    loss: ``(readout, labels, *, where) -> scalar`` logged as ``loss``; None: the weight's own.
    rank_score: a key of :data:`RANK_SCORES`; None: the direction's score.
    needs: readout fields needed beyond those the weight and the direction declare.
    name: how tables and logs name it.

  >>> hybrid = Objective(weight="cl", direction="sft")
  >>> hybrid.rank_by, sorted(hybrid.needs), hybrid.name
  ('sft', [], 'w_cl-d_sft')
  """

  weight: Any
  direction: Any
  loss: Callable | None = None
  rank_score: str | None = None
  needs: frozenset = frozenset()
  name: str = ""

  def __post_init__(self):
    weight, direction = resolve_weight(self.weight), resolve_direction(self.direction)
    object.__setattr__(self, "weight", weight)
    object.__setattr__(self, "direction", direction)
    unknown = sorted(set(self.needs) - set(READOUT_NEEDS))
    if unknown:
      raise ValueError(f"objective needs {unknown}: not readout fields; known: {READOUT_NEEDS}")
    object.__setattr__(self, "needs", frozenset(self.needs) | weight.needs | direction.needs)
    if self.rank_score is not None and self.rank_score not in RANK_SCORES:
      raise ValueError(f"rank_score {self.rank_score!r} is not a ranking score; known: "
                       f"{sorted(RANK_SCORES)}")
    if direction.score not in RANK_SCORES:
      raise ValueError(f"direction {direction.name!r} ranks by {direction.score!r}, not a ranking "
                       f"score; known: {sorted(RANK_SCORES)}")
    if not self.name:
      object.__setattr__(self, "name", f"w_{weight.name}-d_{direction.name}")

  @property
  def rank_by(self) -> str:
    """The ranking score that judges this objective (``rank_score`` or the direction's)."""
    return self.rank_score or self.direction.score

  @property
  def has_loss(self) -> bool:
    return self.loss is not None or self.weight.loss is not None

  def loss_value(self, readout: Readout, labels: Array, *, where: Array | None = None) -> Array:
    """The loss logged as ``loss``: ``self.loss``, else the weight's own."""
    if self.loss is not None:
      return self.loss(readout, labels, where=where)
    if self.weight.loss is None:
      raise ValueError(
          f"objective {self.name!r}: its weight {self.weight.name!r} declares no loss to log as "
          "`loss`; give one: Objective(..., loss=fn) or Weight(fn, loss=...)")
    return self.weight.loss_value(readout, labels, where=where)

  def surrogate(self, readout: Readout, labels: Array, *, where: Array | None = None,
                reduce_fn=jnp.mean) -> Array:
    """:func:`decomp.url_surrogate` of this objective's weight and direction."""
    return url_surrogate(readout, labels, weight=self.weight, direction=self.direction,
                         where=where, reduce_fn=reduce_fn)

  def with_parts(self, *, weight: Any = None, direction: Any = None,
                 weight_params: Mapping[str, Any] | None = None,
                 direction_params: Mapping[str, Any] | None = None) -> "Objective":
    """This objective with its weight and/or direction replaced, and parameters bound.

    A replaced weight brings its own loss (an explicit ``loss`` belonged to the old weight) and a
    replaced direction its own ranking score, as for any hybrid.
    """
    changes: dict[str, Any] = {}
    if weight is not None:
      changes.update(weight=resolve_weight(weight), loss=None)
    if direction is not None:
      changes.update(direction=resolve_direction(direction), rank_score=None)
    if changes:
      changes["name"] = ""  # a new pair: named after its parts
    new = dataclasses.replace(self, **changes) if changes else self
    if weight_params:
      new = dataclasses.replace(new, weight=new.weight.bind(**weight_params))
    if direction_params:
      new = dataclasses.replace(new, direction=new.direction.bind(**direction_params))
    return new


# --- url surrogate -------------------------------------------------------------------------------


def url_surrogate(readout: Readout, labels, *, weight, direction, where=None,
                  reduce_fn=jnp.mean) -> Array:
  """:func:`decomp.url_loss` on a :class:`~decomp.Readout` (what a model's ``readout`` returns).

  Args:
    readout: per-document readout, arrays ``[..., n]``.
    labels: ``[..., n]`` 1 for positives, 0 for negatives.
    weight: a weight name, import path, :class:`~decomp.weights.Weight` or weight function.
    direction: a direction name, import path, :class:`~decomp.directions.Direction` or function.
    where: optional ``[..., n]`` boolean mask of valid documents.
    reduce_fn: reduction over lists; ``None`` returns the per-document terms
      ``sg(W_i) f_D(x_i)`` ``[..., n]``.
  """
  weight_fn, direction_fn = resolve_weight(weight), resolve_direction(direction)
  _lists.check_inputs("url_loss", labels, where, yes_logits=readout.yes, no_logits=readout.no)
  docs = _lists.doc_mask(labels, where)
  signed_weight = jax.lax.stop_gradient(weight_fn(readout, labels, where=where))
  score = direction_fn(readout)
  for name, value in (("weight", signed_weight), ("direction", score)):
    if jnp.shape(value) != jnp.shape(labels):
      raise ValueError(f"url_loss: the {name} function returned shape {jnp.shape(value)}, "
                       f"expected the labels' shape {jnp.shape(labels)}")
  terms = _lists.masked(signed_weight * _lists.masked(score, docs), docs)
  if reduce_fn is None:
    return terms
  return _lists.reduce_lists(jnp.sum(terms, axis=-1), _lists.list_mask(labels, where), reduce_fn)


# --- the registries --------------------------------------------------------------------------------

# Where each entry registered in code lives ("module:attribute"), when it is a module attribute:
# a config names it by that path, so a process that never ran the registration can resolve it.
_IMPORT_PATHS: dict[tuple[str, str], str] = {}


def _is_import_path(spec: str) -> bool:
  module, sep, attribute = spec.partition(":")
  return bool(sep and module and attribute)


def import_object(path: str) -> Any:
  """The object at ``"package.module:attribute"`` (dots in the attribute walk into it)."""
  module_name, _, attribute = path.partition(":")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"cannot import {module_name!r} (from {path!r}): {e}") from None
  for part in attribute.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{path!r}: module {module_name!r} has no attribute {attribute!r}")
    obj = getattr(obj, part)
  return obj


def _lookup(spec: Any, kind: str, table: Mapping[str, Any]) -> Any:
  if not isinstance(spec, str):
    return spec
  if spec in table:
    return table[spec]
  if _is_import_path(spec):
    return import_object(spec)
  raise ValueError(f"unknown {kind} {spec!r}; registered {kind}s are {sorted(table)}, or name "
                   f"one by import path 'package.module:attribute'")


def _resolve_part(spec: Any, kind: str, cls: type, table: Mapping[str, Any], params):
  value = _lookup(spec, kind, table)
  if not isinstance(value, cls):
    if not callable(value) or isinstance(value, (Weight, Direction, Objective)):
      raise TypeError(f"{kind} must be a registered name, an import path, a {cls.__name__} or a "
                      f"function, got {type(value).__name__} ({spec!r})")
    value = cls(value)
  return value.bind(**params) if params else value


def resolve_weight(weight: Any, **params) -> Weight:
  """A :class:`~decomp.weights.Weight` from a name, an import path, a Weight or a function.

  A bare function becomes a Weight without a loss of its own. Keyword ``params`` (e.g.
  ``temperature=0.05``, ``tau=0.1``) are bound to it.
  """
  return _resolve_part(weight, "weight", Weight, weights_lib.WEIGHTS, params)


def resolve_direction(direction: Any, **params) -> Direction:
  """A :class:`~decomp.directions.Direction` from a name, an import path, a Direction or a
  function (a bare function declares no needs and is ranked by P(yes))."""
  return _resolve_part(direction, "direction", Direction, directions_lib.DIRECTIONS, params)


def resolve_objective(objective: Any) -> Objective:
  """An :class:`Objective` from a registered name, an import path or an Objective."""
  value = _lookup(objective, "objective", OBJECTIVES)
  if not isinstance(value, Objective):
    raise TypeError(f"objective must be a registered name, an import path or an Objective, got "
                    f"{type(value).__name__} ({objective!r})")
  return value


def _register(kind: str, table: dict, value: Any, name: str, replace: bool,
              caller: str | None) -> None:
  if not name:
    raise ValueError(f"a registered {kind} needs a name")
  if ":" in name:
    raise ValueError(f"{kind} name {name!r}: ':' is reserved for import paths")
  if name in table and table[name] is not value and not replace:
    raise ValueError(f"a {kind} named {name!r} is registered already; pass replace=True")
  table[name] = value
  path = _module_path_of(value, caller)
  if path:
    _IMPORT_PATHS[(kind, name)] = path


def _caller_module() -> str | None:
  """The module that called the public function calling this one."""
  return sys._getframe(2).f_globals.get("__name__")


def _module_path_of(value: Any, caller: str | None = None) -> str | None:
  """``"module:attribute"`` of a module-level object, looked up in its defining module, the
  modules of the functions it wraps and the registering ``caller``'s module."""
  parts = [value, getattr(value, "fn", None), getattr(value, "loss", None)]
  for part in (getattr(value, "weight", None), getattr(value, "direction", None)):
    parts += [part, getattr(part, "fn", None)]
  modules = [getattr(p, "__module__", None) for p in parts if p is not None] + [caller]
  for module_name in modules:
    module = sys.modules.get(module_name) if module_name else None
    if module is None or module_name == "__main__":
      continue
    for attribute, candidate in vars(module).items():
      if candidate is value:
        return f"{module_name}:{attribute}"
  return None


def register_objective(objective: Objective, name: str | None = None, *,
                       replace: bool = False) -> Objective:
  """Makes ``objective`` resolvable by ``name`` (default its own) everywhere in this process.

  A config records it by import path when the objective is a module attribute, so a fresh
  process (a sweep's runs, a resumed workdir) finds it too.
  """
  if not isinstance(objective, Objective):
    raise TypeError(f"register_objective takes an Objective, got {type(objective).__name__}")
  _register("objective", OBJECTIVES, objective, name or objective.name, replace,
            _caller_module())
  return objective


def register_weight(weight: Weight, name: str | None = None, *, replace: bool = False) -> Weight:
  """Makes ``weight`` resolvable by ``name`` (default its own) in ``url_loss`` and configs."""
  weight = resolve_weight(weight)
  _register("weight", weights_lib.WEIGHTS, weight, name or weight.name, replace, _caller_module())
  return weight


def register_direction(direction: Direction, name: str | None = None, *,
                       replace: bool = False) -> Direction:
  """Makes ``direction`` resolvable by ``name`` (default its own) in ``url_loss`` and configs."""
  direction = resolve_direction(direction)
  _register("direction", directions_lib.DIRECTIONS, direction, name or direction.name, replace,
            _caller_module())
  return direction


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective(weight="sft", direction="sft", name="sft"),
    "cl": Objective(weight="cl", direction="cl", name="cl"),
    # The field's objectives: each weight reads z_y, so D_CL (f = z_y) makes the pair's gradient
    # exactly that of the weight's own loss (bind score='sft' and take D_SFT for z_y - z_n).
    **{name: Objective(weight=name, direction="cl", name=name)
       for name in ("listnet", "listmle", "ranknet", "lambdaloss", "margin_mse",
                    "hard_infonce")},
}

BUILT_IN = {"objective": frozenset(OBJECTIVES), "weight": frozenset(weights_lib.WEIGHTS),
            "direction": frozenset(directions_lib.DIRECTIONS)}


def portable_name(kind: str, spec: Any) -> Any:
  """How a config records ``spec``: built-in names and import paths as they are; a name
  registered in code by the import path of its object (when it has one), so that another
  process resolves it without running the registration."""
  if isinstance(spec, str):
    if spec in BUILT_IN[kind] or _is_import_path(spec):
      return spec
    return _IMPORT_PATHS.get((kind, spec), spec)
  path = _module_path_of(spec)
  if path is None:
    raise ValueError(f"the {kind} {spec!r} is not a module attribute, so a config cannot record "
                     f"it: define it at module level and name it by import path "
                     f"'package.module:attribute'")
  return path
