"""The multi-behavior sequential dataset: RecBole's ``SequentialDataset`` plus a behavior field.

What it adds to RecBole:

* a ``behavior`` token field whose ids follow the dataset's configured vocabulary order
  (``behaviors: [view, cart, buy]`` -> view=1, cart=2, buy=3; 0 is padding), so every
  model, table and config agrees on what behavior id k means;
* lean augmentation: RecBole materializes every prefix of every user as dense
  ``[n_examples, MAX_ITEM_LIST_LENGTH]`` copies of every field with a Python loop; we keep
  the interactions once, sorted, and store only the row index of each example's target.
  Batches are gathered from those arrays on the fly (:class:`SequenceLoader`);
* the protocol's leave-one-out split: per user, last interaction = test target, second to
  last = valid target, every earlier interaction (from the second on) = a training target.
  The input of an example is the window of at most ``MAX_ITEM_LIST_LENGTH`` rows strictly
  before its target row, so the target interaction is never in its own input.

Batch fields (RecBole names): ``user_id`` [B], ``item_id_list`` [B, L], ``behavior_list``
[B, L], ``item_length`` [B] (sequences are left-aligned and zero-padded, as RecBole's models
expect). Training batches add the target ``item_id`` [B] and its ``behavior`` [B]. Evaluation
batches never carry the target item; they carry ``behavior`` only when the task allows it
(see ``mbrec.evaluation``).

Training units (config ``train_unit``). ``prefix`` (above): one example per training target.
``sequence``: one example per *window* of a user's training part (every row strictly before the
valid target, so valid and test targets never enter it), built by :class:`WindowLoader`:

* causal models (``train_unit_kind = "causal"``): windows of at most ``L + 1`` rows (L =
  ``MAX_ITEM_LIST_LENGTH``) cut from the start of the part, consecutive windows sharing one row
  (stride L). The input is the first L rows; position j predicts row j + 1, given in
  ``target_item_list`` [B, L] and ``target_behavior_list`` [B, L] (0 = no target). Every training
  target of prefix mode is predicted exactly once per epoch. A part of at most L + 1 rows is one
  window and each position sees exactly the history its prefix example sees; in a later window of
  a longer part, a target sees the rows of its window before it (1 to L) where its prefix example
  sees the L rows before it. A batch holds ``train_batch_size`` targets or windows (``sequence_batch``).
* Cloze models (``train_unit_kind = "cloze"``): one window of at most W rows per user and epoch,
  the part's last W rows or, for a longer part, with probability ``cloze_random_window_prob``
  (default 0: never) a uniformly drawn window of W rows; the model draws its own masks. W is the
  model's ``cloze_window_rows``: ``"window"`` (default), W = L; ``"window+slot"``, W = L + 1, for
  a model with absolute positions whose evaluation query puts its slot after a full window of L
  history rows, at position L: windows of L rows would never train that position.
"""

import queue
import threading

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.data.transform import construct_transform
from recbole.utils import FeatureSource, FeatureType

SPLITS = ("train", "valid", "test")
PAD_ID = 0
TRAIN_UNITS = ("prefix", "sequence")
TRAIN_UNIT_KINDS = ("causal", "cloze")
SEQUENCE_BATCHES = ("targets", "windows")  # config ``sequence_batch``: what train_batch_size counts
CLOZE_WINDOW_ROWS = {"window": 0, "window+slot": 1}  # a Cloze model's window: L rows, or L + 1 (docstring)
# Sequence-mode batch fields of causal windows: what each input position predicts.
TARGET_ITEM_LIST = "target_item_list"
TARGET_BEHAVIOR_LIST = "target_behavior_list"


def train_unit(config):
    """The run's training unit; a model whose YAML declares none trains on prefixes."""
    return config["train_unit"] or "prefix"


class DatasetError(ValueError):
    """The prepared data or the dataset config cannot be used; the message says what to fix."""


class MultiBehaviorSequentialDataset(SequentialDataset):
    """RecBole sequential dataset that carries each interaction's behavior.

    Config keys: ``BEHAVIOR_FIELD`` (default ``behavior``), ``behaviors`` (vocabulary in
    funnel order), ``target_behavior``, ``MAX_ITEM_LIST_LENGTH``, ``min_user_inter``.
    """

    def __init__(self, config):
        self.behavior_field = config["BEHAVIOR_FIELD"] or "behavior"
        self.behavior_vocab = list(config["behaviors"] or [])
        if not self.behavior_vocab:
            raise DatasetError("Dataset config must list its behaviors, e.g. `behaviors: [view, cart, buy]`")
        if config["target_behavior"] not in self.behavior_vocab:
            raise DatasetError(
                f"target_behavior '{config['target_behavior']}' is not in behaviors {self.behavior_vocab}"
            )
        self.split_name = None
        self.target_rows = None
        super().__init__(config)

    # ------------------------------------------------------------------ loading
    def _load_data(self, token, dataset_path):
        super()._load_data(token, dataset_path)
        required = [self.config["USER_ID_FIELD"], self.config["ITEM_ID_FIELD"], self.behavior_field,
                    self.config["TIME_FIELD"]]
        if self.inter_feat is None:
            raise DatasetError(f"No interaction file {dataset_path}/{token}.inter; run `python -m mbrec.data prepare`")
        missing = [field for field in required if field not in self.inter_feat.columns]
        if missing:
            raise DatasetError(
                f"{dataset_path}/{token}.inter lacks column(s) {missing} "
                f"(found {list(self.inter_feat.columns)}; header must be e.g. 'behavior:token')"
            )
        if len(self.inter_feat) == 0:
            raise DatasetError(f"{dataset_path}/{token}.inter holds no interactions")

    def _data_filtering(self):
        before = len(self.inter_feat)
        try:
            super()._data_filtering()
        except ValueError as error:  # RecBole: "Some feat is empty" when a filter removes everything
            if "empty" not in str(error):
                raise
        if len(self.inter_feat) == 0:
            raise DatasetError(
                f"All {before} interactions were filtered out (min_user_inter={self.config['min_user_inter']}, "
                f"min_item_inter={self.config['min_item_inter']}): no user has enough interactions"
            )

    def _remap_ID_all(self):
        super()._remap_ID_all()
        self._order_behavior_ids()

    def _change_feat_format(self):
        # Order by exact time while timestamps are still float64 (pandas): RecBole then converts them
        # to float32, whose spacing at Unix times is 128 s, and data_augmentation's sort could no
        # longer tell apart interactions less than 128 s apart. Stable, so ties keep the file order
        # (the protocol's tie rule); the later float32 sort is stable and keeps this order.
        uid, time = self.config["USER_ID_FIELD"], self.config["TIME_FIELD"]
        if isinstance(self.inter_feat, pd.DataFrame) and time in self.inter_feat:
            self.inter_feat = self.inter_feat.sort_values([uid, time], kind="stable").reset_index(drop=True)
        super()._change_feat_format()

    def _order_behavior_ids(self):
        """Re-number behavior ids by the configured vocabulary (RecBole numbers by first appearance)."""
        field = self.behavior_field
        found_tokens = self.field2id_token[field]  # index = RecBole's id, [0] = '[PAD]'
        unknown = sorted(set(found_tokens[1:]) - set(self.behavior_vocab))
        if unknown:
            raise DatasetError(
                f"Behavior value(s) {unknown} in {self.dataset_name}.inter are not in the configured "
                f"behaviors {self.behavior_vocab}"
            )
        new_tokens = np.array(["[PAD]", *self.behavior_vocab])
        new_id_of = {token: index for index, token in enumerate(new_tokens)}
        old_to_new = np.array([new_id_of[token] for token in found_tokens])
        self.inter_feat[field] = old_to_new[self.inter_feat[field].to_numpy()]
        self.field2id_token[field] = new_tokens
        self.field2token_id[field] = new_id_of

    # ------------------------------------------------------------------ augmentation
    @property
    def sequence_fields(self):
        """Interaction fields that get a ``<field>_list`` input sequence."""
        return [self.iid_field, self.behavior_field]

    def _aug_presets(self):
        suffix = self.config["LIST_SUFFIX"]
        for field in self.sequence_fields:
            list_field = field + suffix
            setattr(self, f"{field}_list_field", list_field)
            self.set_field_property(list_field, FeatureType.TOKEN_SEQ, FeatureSource.INTERACTION,
                                    self.max_item_list_len)
        self.set_field_property(self.item_list_length_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)

    def data_augmentation(self):
        """Index every example by its target row instead of copying its input window."""
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        # Stable: equal timestamps keep the prepared file's order, which encodes the
        # protocol's tie rule (file order, or behavior vocabulary order for format A).
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        user_ids = self.inter_feat[self.uid_field].numpy()
        n_rows = len(user_ids)
        is_first = np.ones(n_rows, dtype=bool)
        is_first[1:] = user_ids[1:] != user_ids[:-1]
        user_starts = np.flatnonzero(is_first)
        user_counts = np.diff(np.append(user_starts, n_rows))
        self.user_row_starts, self.user_row_counts = user_starts, user_counts  # [n_users_with_rows]
        self.row_user_start = np.repeat(user_starts, user_counts)  # [n_rows]
        self.row_arrays = {field: self.inter_feat[field].numpy() for field in
                           [self.uid_field, *self.sequence_fields]}

        rank_in_user = np.arange(n_rows) - self.row_user_start
        user_ends = user_starts + user_counts - 1
        test_rows = user_ends[user_counts >= 2]
        valid_rows = user_ends[user_counts >= 3] - 1
        # Training targets: every row from a user's second one up to (excluding) the valid target.
        row_count = np.repeat(user_counts, user_counts)
        train_rows = np.flatnonzero((rank_in_user >= 1) & (rank_in_user < row_count - 2))
        self.split_rows = {"train": train_rows, "valid": valid_rows, "test": test_rows}
        # Rows a model may learn from (everything before each user's valid target); used for
        # the training split's inter_feat so that dataset statistics never see valid/test targets.
        self.train_visible_rows = np.flatnonzero(rank_in_user < np.maximum(row_count - 2, 1))

    def build(self, splits=SPLITS):
        """Return views of ``splits`` (default ``[train, valid, test]``) sharing this dataset's arrays.

        A tuning trial asks for ``("train", "valid")`` only, so the test view never exists there.
        """
        unknown = [split for split in splits if split not in SPLITS]
        if unknown:
            raise ValueError(f"Unknown split(s) {unknown}; valid splits: {SPLITS}")
        if not hasattr(self, "split_rows"):
            self._change_feat_format()  # DataFrame -> Interaction, then data_augmentation()
        views = []
        for split in splits:
            rows = self.split_rows[split]
            visible = self.train_visible_rows if split == "train" else rows
            view = self.copy(self.inter_feat[torch.from_numpy(visible)])
            view.split_name = split
            view.target_rows = rows
            views.append(view)
        return views

    # ------------------------------------------------------------------ batches
    @property
    def n_behaviors(self):
        """Number of behavior ids including padding (ids run 1..len(behaviors))."""
        return len(self.behavior_vocab) + 1

    @property
    def target_behavior_id(self):
        return self.field2token_id[self.behavior_field][self.config["target_behavior"]]

    def input_window(self, target_rows):
        """Row indices of each example's input, left-aligned: ``[B, L]`` rows and ``[B]`` lengths.

        Padding slots hold -1. Only rows strictly before the target row, of the same user.
        """
        target_rows = np.asarray(target_rows, dtype=np.int64)
        start = np.maximum(self.row_user_start[target_rows], target_rows - self.max_item_list_len)  # [B]
        lengths = target_rows - start  # [B]
        offsets = np.arange(self.max_item_list_len)  # [L]
        rows = start[:, None] + offsets[None, :]  # [B, L]
        rows[offsets[None, :] >= lengths[:, None]] = -1
        return rows, lengths

    def target_in_window(self, target_rows, chunk_size=None):
        """``[B]`` bool: whether each example's target item occurs in its own input window.

        A True target is a *repeat* (the user already interacted with the item, with any
        behavior, within the ``MAX_ITEM_LIST_LENGTH`` rows the model sees); False is a *new*
        item. Computed in chunks so the ``[chunk, L]`` window never holds all users at once.
        """
        target_rows = np.asarray(target_rows, dtype=np.int64)
        chunk_size = int(chunk_size or self.config["eval_batch_size"] or len(target_rows) or 1)
        items = self.row_arrays[self.iid_field]
        flags = np.zeros(len(target_rows), dtype=bool)
        for begin in range(0, len(target_rows), chunk_size):
            rows = target_rows[begin:begin + chunk_size]
            window, _ = self.input_window(rows)  # [chunk, L], -1 = padding
            window_items = np.where(window >= 0, items[np.maximum(window, 0)], PAD_ID)  # [chunk, L]
            flags[begin:begin + chunk_size] = (window_items == items[rows][:, None]).any(axis=1)
        return flags

    def make_batch(self, target_rows, with_target=False, behavior_hint=None):
        """Gather one batch as a RecBole ``Interaction``.

        Args:
            target_rows: flat row indices of the examples' targets.
            with_target: add the target ``item_id`` and ``behavior`` (training only).
            behavior_hint: ``None`` (no ``behavior`` field), ``"true"`` (the target's own
                behavior: the behavior_specific task) or a behavior id given to every example.
        """
        rows, lengths = self.input_window(target_rows)
        padded = rows < 0
        safe_rows = np.where(padded, 0, rows)
        batch = {
            self.uid_field: torch.from_numpy(self.row_arrays[self.uid_field][target_rows]),
            self.item_list_length_field: torch.from_numpy(lengths),
        }
        for field in self.sequence_fields:
            values = self.row_arrays[field][safe_rows]  # [B, L]
            values[padded] = PAD_ID
            batch[field + self.config["LIST_SUFFIX"]] = torch.from_numpy(values)
        if with_target:
            batch[self.iid_field] = torch.from_numpy(self.row_arrays[self.iid_field][target_rows])
        if with_target or behavior_hint == "true":
            batch[self.behavior_field] = torch.from_numpy(self.row_arrays[self.behavior_field][target_rows])
        elif behavior_hint is not None:
            batch[self.behavior_field] = torch.full((len(target_rows),), int(behavior_hint), dtype=torch.long)
        return Interaction(batch)

    # ------------------------------------------------------------------ sequence windows
    def training_parts(self):
        """First row ``[U]`` and number of rows ``[U]`` of each user's training part.

        The part is every row strictly before the user's valid target (users with one); prefix
        mode's training targets are exactly the part's rows from its second one on.
        """
        has_valid = self.user_row_counts >= 3
        return self.user_row_starts[has_valid], self.user_row_counts[has_valid] - 2

    def causal_windows(self):
        """``[W, 2]`` (first row, number of rows) of the causal training windows (module docstring)."""
        starts, sizes = self.training_parts()
        n_targets = sizes - 1  # the part's first row is never a target
        starts, n_targets = starts[n_targets > 0], n_targets[n_targets > 0]
        window = self.max_item_list_len
        per_user = (n_targets + window - 1) // window
        user_of = np.repeat(np.arange(len(starts)), per_user)  # [W]
        index_in_user = np.arange(len(user_of)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
        targets = np.minimum(window, n_targets[user_of] - index_in_user * window)  # [W]
        return np.stack([starts[user_of] + index_in_user * window, targets + 1], axis=1)

    def cloze_windows(self, random_window_prob=0.0, window=None):
        """``[U, 2]`` (first row, rows): one Cloze window of at most ``window`` (default L) rows per user."""
        starts, sizes = self.training_parts()
        window = window or self.max_item_list_len
        n_rows = np.minimum(sizes, window)
        first = starts + sizes - n_rows  # the part's last rows
        if random_window_prob > 0:
            longer = sizes > window
            pick = (torch.rand(len(starts)).numpy() < random_window_prob) & longer
            offsets = (torch.rand(len(starts)).numpy() * (sizes - window + 1)).astype(np.int64)
            first = np.where(pick, starts + offsets, first)
        return np.stack([first, n_rows], axis=1)

    def make_window_batch(self, windows, causal, width=None):
        """Gather sequence-mode windows ``[B, 2]`` (first row, rows) as an ``Interaction``.

        Causal windows: the input is every row but the last and ``target_*_list`` hold the next
        row of each input position. Cloze windows: the input is the whole window, no targets.
        The input is ``width`` columns wide (default L; a ``"window+slot"`` Cloze model's L + 1).
        """
        first, n_rows = windows[:, 0], windows[:, 1]
        lengths = n_rows - 1 if causal else n_rows  # [B]
        offsets = np.arange(width or self.max_item_list_len)
        rows = first[:, None] + offsets[None, :]  # [B, width]
        padded = offsets[None, :] >= lengths[:, None]
        batch = {self.uid_field: torch.from_numpy(self.row_arrays[self.uid_field][first]),
                 self.item_list_length_field: torch.from_numpy(lengths)}
        gathered = {field + self.config["LIST_SUFFIX"]: (field, rows) for field in self.sequence_fields}
        if causal:
            gathered.update({TARGET_ITEM_LIST: (self.iid_field, rows + 1),
                             TARGET_BEHAVIOR_LIST: (self.behavior_field, rows + 1)})
        for name, (field, field_rows) in gathered.items():
            values = self.row_arrays[field][np.where(padded, 0, field_rows)]  # [B, L]
            values[padded] = PAD_ID
            batch[name] = torch.from_numpy(values)
        return Interaction(batch)

    def target_items(self, target_rows):
        return self.row_arrays[self.iid_field][target_rows]

    def target_behaviors(self, target_rows):
        return self.row_arrays[self.behavior_field][target_rows]

    def user_tokens(self, target_rows):
        return self.id2token(self.uid_field, self.row_arrays[self.uid_field][target_rows])


class SequenceLoader:
    """Iterates a split's examples in batches of RecBole ``Interaction`` objects.

    Training loaders shuffle each epoch with torch's global RNG (seeded by ``init_seed``),
    apply RecBole's batch ``transform`` (e.g. BERT4Rec's ``mask_itemseq``) and, for BPR-style
    models, add one uniformly sampled negative item per example.
    """

    def __init__(self, config, split_dataset, batch_size, shuffle=False, training=False, behavior_hint=None,
                 target_rows=None, prefetch=0, pin_memory=False):
        self.config = config
        self.dataset = split_dataset
        self.target_rows = split_dataset.target_rows if target_rows is None else np.asarray(target_rows)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.training = training
        self.behavior_hint = behavior_hint
        self.transform = construct_transform(config) if training else None
        neg_args = config["train_neg_sample_args"] or {}
        self.sample_negatives = training and neg_args.get("distribution", "none") not in (None, "none")
        self.n_items = split_dataset.num(split_dataset.iid_field)
        self.prefetch = int(prefetch or 0)
        self.pin_memory = bool(pin_memory)
        if self.prefetch < 0:
            raise ValueError(f"loader_prefetch must be >= 0 batches, got {prefetch}")

    def __len__(self):
        return (len(self.target_rows) + self.batch_size - 1) // self.batch_size

    def epoch_batches(self):
        """This epoch's batches of examples (target rows); drawn here, in the consuming thread."""
        order = torch.randperm(len(self.target_rows)).numpy() if self.shuffle else np.arange(len(self.target_rows))
        return [self.target_rows[order[begin:begin + self.batch_size]]
                for begin in range(0, len(order), self.batch_size)]

    def __iter__(self):
        row_batches = self.epoch_batches()
        gathered = self._gather_in_background(row_batches) if self.prefetch else map(self._gather, row_batches)
        for rows, batch in gathered:
            # Random draws (masking, negatives) stay in the consuming thread, in batch order, so a
            # seeded run gives the same batches with or without prefetching.
            if self.transform is not None:
                batch = self.transform(self.dataset, batch)
            if self.sample_negatives:
                negatives = torch.randint(1, self.n_items, (len(rows),))
                batch.update(Interaction({self.config["NEG_PREFIX"] + self.dataset.iid_field: negatives}))
            yield batch

    def build_batch(self, rows):
        return self.dataset.make_batch(rows, with_target=self.training, behavior_hint=self.behavior_hint)

    def _gather(self, rows):
        """The deterministic part of a batch: windows gathered from the flat arrays (pinned if asked)."""
        batch = self.build_batch(rows)
        if self.pin_memory:
            batch = Interaction({field: value.pin_memory() for field, value in batch.interaction.items()})
        return rows, batch

    def _gather_in_background(self, row_batches):
        """Gather up to ``prefetch`` batches ahead in a thread (NumPy/torch gathers release the GIL)."""
        ready = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def offer(item):
            """Queue ``item`` unless the consumer has stopped (then return False)."""
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for rows in row_batches:
                    if not offer(self._gather(rows)):
                        return
                offer(done)
            except BaseException as error:  # handed to the consumer, raised there
                offer(error)

        worker = threading.Thread(target=produce, name="mbrec-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # the consumer stopped early (or finished): let the thread end
            worker.join()


class WindowLoader(SequenceLoader):
    """Sequence-mode training batches: whole windows of users' training parts (module docstring).

    ``kind`` is the model's ``train_unit_kind``. Causal: every window each epoch, shuffled; a batch
    holds the windows whose first target falls in its block of ``batch_size`` targets, so it
    covers about as many (history, target) pairs as a prefix-mode batch (at most
    ``batch_size + L - 1``) and an epoch takes about as many optimizer steps; with
    ``sequence_batch: windows``, ``batch_size`` windows a batch (up to L times fewer steps). Cloze:
    one window per user (``cloze_window_rows``), redrawn each epoch, ``batch_size`` windows a batch.
    No batch transform and no negative sampling: the model computes its loss from the windows.
    """

    def __init__(self, config, split_dataset, batch_size, kind, prefetch=0, pin_memory=False,
                 cloze_window_rows="window"):
        if kind not in TRAIN_UNIT_KINDS:
            raise DatasetError(f"train_unit: sequence needs the model's train_unit_kind in {TRAIN_UNIT_KINDS}, "
                               f"got {kind!r}")
        super().__init__(config, split_dataset, batch_size, shuffle=True, training=True, prefetch=prefetch,
                         pin_memory=pin_memory)
        self.transform, self.sample_negatives = None, False
        self.causal = kind == "causal"
        self.random_window_prob = float(config["cloze_random_window_prob"] or 0.0)
        self.windows = split_dataset.causal_windows() if self.causal else None  # fixed; Cloze: drawn per epoch
        if cloze_window_rows not in CLOZE_WINDOW_ROWS:
            raise DatasetError(f"cloze_window_rows must be in {list(CLOZE_WINDOW_ROWS)}, got {cloze_window_rows!r}")
        self.width = None if self.causal else split_dataset.max_item_list_len + CLOZE_WINDOW_ROWS[cloze_window_rows]
        self.n_targets = int(self.windows[:, 1].sum() - len(self.windows)) if self.causal else 0
        self.by_targets = self.causal and (config["sequence_batch"] or "targets") == "targets"

    def __len__(self):
        if self.by_targets:  # an upper bound: the last batch may end up merged into the one before
            return (self.n_targets + self.batch_size - 1) // self.batch_size
        n_windows = len(self.windows) if self.causal else len(self.dataset.training_parts()[0])
        return (n_windows + self.batch_size - 1) // self.batch_size

    def epoch_batches(self):
        windows = self.windows if self.causal else self.dataset.cloze_windows(self.random_window_prob, self.width)
        windows = windows[torch.randperm(len(windows)).numpy()]
        if not self.by_targets:  # batch_size windows a batch
            return [windows[begin:begin + self.batch_size] for begin in range(0, len(windows), self.batch_size)]
        targets_before = np.cumsum(windows[:, 1] - 1) - (windows[:, 1] - 1)  # [W]
        cuts = np.flatnonzero(np.diff(targets_before // self.batch_size)) + 1
        return np.split(windows, cuts)

    def build_batch(self, windows):
        return self.dataset.make_window_batch(windows, causal=self.causal, width=self.width)
