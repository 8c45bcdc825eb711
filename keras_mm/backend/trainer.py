"""One train step for every backend, written once as stateful Keras code.

Models mixing in `IterationTrainer` implement `iteration(data) -> logs`, reading and assigning
variables and calling `optimizer.apply` as ordinary Keras code. On TensorFlow and PyTorch that
runs as is, inside the trainer's compiled function. On JAX, whose trainer threads state
explicitly (`train_step(state, data)`), the same code runs inside a `keras.StatelessScope`
bound to the incoming state, and the scope's final values become the new state.
"""

import keras

from keras_mm.backend.autodiff import bound

_BACKEND = keras.backend.backend()


class IterationTrainer:
    """Mixin for `keras.Model` subclasses: `train_step` calls `self.iteration(data)`."""

    def iteration(self, data):
        raise NotImplementedError

    # Keras does not save SeedGenerator states; saving ours makes a resumed `fit`
    # (BackupAndRestore, load_weights) draw the same noise as an uninterrupted one.
    _SEED_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if getattr(self, "seed_generator", None) is not None:
            store[self._SEED_KEY] = keras.ops.convert_to_numpy(self.seed_generator.state.value)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if self._SEED_KEY in keys and getattr(self, "seed_generator", None) is not None:
            self.seed_generator.state.assign(store[self._SEED_KEY][...])
            store = {k: store[k] for k in keys if k != self._SEED_KEY}
        super().load_own_variables(store)

    def _state_groups(self):
        return (
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
            self.metrics_variables,
        )

    if _BACKEND == "jax":

        def train_step(self, state, data):
            groups = self._state_groups()
            variables = [v for group in groups for v in group]
            values = [x for group in state for x in group]
            with bound(variables, values) as scope:
                logs = self.iteration(data)
            new_state = tuple(
                [scope.state_mapping.get(id(v), x) for v, x in zip(group, values_group)]
                for group, values_group in zip(groups, state)
            )
            return logs, new_state

    else:

        def train_step(self, data):
            return self.iteration(data)

