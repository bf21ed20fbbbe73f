"""Classification heads that sit on pooled backbone features."""

from __future__ import annotations

from torch import Tensor, nn


class LinearHead(nn.Module):
    """Dropout then one linear layer: the head of a linear probe."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(features))


class MLPHead(nn.Module):
    """A hidden layer (norm, activation, dropout) before the classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.hidden(features))
