"""One train step for every backend, written once as stateful Keras code.

Models mixing in `IterationTrainer` implement `iteration(data) -> logs`, reading and assigning
variables and calling `optimizer.apply` as ordinary Keras code. On TensorFlow and PyTorch that
runs as is, inside the trainer's compiled function. On JAX, whose trainer threads state
explicitly (`train_step(state, data)`), the same code runs inside a `keras.StatelessScope`
bound to the incoming state, and the scope's final values become the new state.
"""

import keras

from keras_mm import checks
from keras_mm.backend.autodiff import bound

_BACKEND = keras.backend.backend()


class IterationTrainer:
    """Mixin for `keras.Model` subclasses: `train_step` calls `self.iteration(data)`."""

    def iteration(self, data):
        raise NotImplementedError

    def check_batch(self, data):
        """Check a concrete training batch on the host; raise a one-line ValueError. JAX
        calls it on each batch before the jitted step, where values cannot be checked."""

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; a bad batch found inside a compiled step (a TensorFlow graph
        assertion) is re-raised as its one-line ValueError."""
        try:
            return super().fit(*args, **kwargs)
        except Exception as error:
            line = checks.batch_error_line(error)
            if line is None or isinstance(error, ValueError) and str(error) == line:
                raise
            raise ValueError(line) from None

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

        def make_train_function(self, force=False):
            super().make_train_function(force)
            step = self.train_function
            if getattr(step, "checks_batches", False):
                return

            def checked_step(state, iterator):
                try:
                    return step(state, (self._checked(data) for data in iterator))
                except ValueError:
                    # Keras emptied the variables for the step; a refused batch (checked
                    # before the step took the state) must not leave the model without them.
                    self._restore_state(state)
                    raise

            checked_step.checks_batches = True
            self.train_function = checked_step

        def _restore_state(self, state):
            for group, values in zip(self._state_groups(), state):
                for variable, value in zip(group, values):
                    if not getattr(value, "is_deleted", lambda: False)():
                        variable.assign(value)

        def _checked(self, data):
            self.check_batch(data)
            return data

    else:

        def train_step(self, data):
            return self.iteration(data)

