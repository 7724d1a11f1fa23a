"""Page-Hinkley change detector: raises an alarm when a series' level shifts.

For direction "up" (e.g. MMD² rising), after each value x_t:
    mean_t = mean(x_1..x_t)
    m_t    = sum_{i<=t} (x_i - mean_i - delta)
    PH_t   = m_t - min_{i<=t} m_i            alarm when PH_t > threshold
"down" (e.g. cosine or CKA falling) mirrors it: m_t = sum (x_i - mean_i + delta) and
PH_t = max_{i<=t} m_i - m_t. `delta` is the size of change tolerated as noise, `threshold`
how much accumulated evidence makes an alarm. After an alarm everything restarts from the
new level, so a later, second change can alarm again.
"""

from __future__ import annotations


class PageHinkley:
    def __init__(self, delta: float, threshold: float, direction: str = "up",
                 min_samples: int = 5):
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if delta < 0 or threshold < 0:
            raise ValueError("delta and threshold must be >= 0")
        self.delta, self.threshold = float(delta), float(threshold)
        self.direction = direction
        self.min_samples = int(min_samples)
        self.alarms = 0
        self.reset()

    def reset(self) -> None:
        """Forget the series so far (keeps the alarm count)."""
        self.n = 0
        self.mean = 0.0
        self.cum = 0.0   # m_t
        self.extreme = 0.0  # min (up) or max (down) of m_t so far
        self.stat = 0.0  # PH_t, the distance compared with the threshold

    def update(self, value: float) -> bool:
        """Feed one value; True exactly on the step that raises an alarm."""
        x = float(value)
        self.n += 1
        self.mean += (x - self.mean) / self.n
        if self.direction == "up":
            self.cum += x - self.mean - self.delta
            self.extreme = min(self.extreme, self.cum)
            self.stat = self.cum - self.extreme
        else:
            self.cum += x - self.mean + self.delta
            self.extreme = max(self.extreme, self.cum)
            self.stat = self.extreme - self.cum
        # Too few samples give a mean that is mostly noise; wait before judging.
        if self.n >= self.min_samples and self.stat > self.threshold:
            self.alarms += 1
            fired = self.stat
            self.reset()
            self.stat = fired  # keep showing the value that fired until the next update
            return True
        return False
