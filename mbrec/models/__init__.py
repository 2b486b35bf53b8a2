"""mbrec's own models, one file per model family."""


class PredictFromFullSort:
    """``predict`` (score of the given item) read off ``full_sort_predict``.

    For models whose natural output is a score over all items; mixed in before the RecBole
    base class so it replaces that class's ``predict``.
    """

    def predict(self, interaction):
        scores = self.full_sort_predict(interaction)  # [B, n_items]
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)  # [B]
