"""Behavioural parameters of the synthetic bank (simulator only, not business config).

Need loadings say which latent need drives which product; `base` is the logit of the monthly
acquisition hazard at average needs, calibrated so that about 3.5% of clients add a product
in a month (the Santander figure) and most clients hold one or two products. These are the
figures of the reference bank (loadings x 1, taste sd 0.5); a bank with other settings
(`BankSpec.need_weight`, `taste_sd`, `need_noise`) has its logits shifted to the same marginals
by `nextbest.simulation.population.calibrate`. The closure
hazards balance those acquisitions, product by product, so the bank is close to stationary:
products per client move by about 2% over 18 months (they grew by 20% before closures were
calibrated), and the marginals do not depend on how many months are simulated. Everyday
products (direct debits, payroll deposits, cards) come and go within a few years, as they do in
the Santander data; mortgages and pension plans stay for decades and grow slowly instead.
See docs/simulator.md and `nextbest.simulation.marginals`.
"""

from __future__ import annotations

NEEDS = ("saving", "income", "preservation", "credit", "everyday")

# product_id: (base logit, initial-holding logit, {need: loading}, monthly closure hazard)
# The closure hazard is scaled by (1 + 3 * dissatisfaction) per customer (mean factor ~1.15).
PRODUCT_BEHAVIOUR: dict[str, tuple[float, float, dict[str, float], float]] = {
    "current_account": (-5.1, 3.2, {"everyday": 1.5}, 0.001),
    "e_account": (-6.5, -2.9, {"everyday": 0.6, "saving": 0.4}, 0.027),
    "payroll_account": (-6.8, -3.1, {"income": 2.0}, 0.03),
    "debit_card": (-6.7, -2.7, {"everyday": 1.6}, 0.021),
    "credit_card": (-7.3, -3.6, {"credit": 1.4, "everyday": 0.6}, 0.034),
    "cashback_card": (-7.7, -4.8, {"everyday": 1.2, "credit": 0.5}, 0.056),
    "savings_account": (-7.2, -3.9, {"saving": 1.8}, 0.045),
    "term_deposit": (-7.6, -3.8, {"preservation": 1.6, "saving": 0.8}, 0.035),
    "consumer_loan": (-7.9, -5.0, {"credit": 1.9}, 0.06),
    "car_loan": (-8.5, -5.6, {"credit": 1.5, "income": 0.4}, 0.06),
    "mortgage": (-9.1, -5.0, {"credit": 1.0, "income": 1.0}, 0.006),
    "investment_funds": (-8.2, -4.8, {"preservation": 1.3, "saving": 1.0}, 0.035),
    "brokerage": (-8.7, -6.0, {"saving": 1.4}, 0.03),
    "pension_plan": (-8.1, -4.6, {"preservation": 1.6, "income": 0.5}, 0.006),
    "life_insurance": (-8.3, -5.2, {"preservation": 0.8, "credit": 0.6}, 0.02),
    "home_insurance": (-8.4, -4.9, {"preservation": 0.6, "credit": 0.6}, 0.025),
    "salary_project": (-6.7, -3.3, {"income": 2.2}, 0.04),
    "direct_debit": (-6.3, -2.5, {"everyday": 1.4}, 0.024),
    "fx_service": (-8.5, -5.8, {"everyday": 0.6, "saving": 0.6}, 0.06),
    "premium_package": (-8.9, -5.8, {"saving": 0.8, "preservation": 0.8}, 0.02),
}
# A product of a bank's own catalogue with no entry above behaves like a representative product
# of its category, so a catalogue can add or rename products without touching the simulator.
CATEGORY_BEHAVIOUR: dict[str, tuple[float, float, dict[str, float], float]] = {
    category: PRODUCT_BEHAVIOUR[product] for category, product in (
        ("account", "e_account"),
        ("card", "debit_card"),
        ("deposit", "savings_account"),
        ("loan", "consumer_loan"),
        ("investment", "investment_funds"),
        ("insurance", "home_insurance"),
        ("service", "fx_service"),
    )
}

SPEND_CATEGORIES = ("groceries", "utilities", "travel", "entertainment", "shopping")
INTERACTION_TYPES = ("login_app", "login_web", "page_view", "call", "complaint")

# Offer-response truth: extra logit an explicit offer adds over the unprompted hazard, by channel.
CHANNEL_LIFT = {
    "mobile_app": 1.7,
    "web": 1.4,
    "email": 0.9,
    "push": 1.2,
    "sms": 0.8,
    "branch": 2.3,
    "call_center": 2.0,
}
# Channel fit by product category: extra logit on top of CHANNEL_LIFT. Products that need advice
# (loans, investments, insurance) sell better face to face and on the phone than by push or SMS;
# simple everyday products (accounts, cards, services) sell better in the app and on the web. The
# same customer answers the same offer differently in another channel, so a contextual policy can
# learn it and a ranking by the model's score alone cannot. A category missing here adds nothing.
CATEGORY_CHANNEL_FIT = {
    "loan": {"branch": 0.6, "call_center": 0.3, "mobile_app": -0.3, "web": 0.0, "email": -0.3, "push": -0.6,
             "sms": -0.6},
    "investment": {"branch": 0.7, "call_center": 0.3, "mobile_app": -0.4, "web": 0.0, "email": -0.2,
                   "push": -0.6, "sms": -0.6},
    "insurance": {"branch": 0.3, "call_center": 0.5, "mobile_app": -0.2, "web": 0.0, "email": 0.0, "push": -0.4,
                  "sms": -0.4},
    "deposit": {"branch": 0.2, "call_center": 0.0, "mobile_app": 0.2, "web": 0.3, "email": 0.2, "push": 0.0,
                "sms": -0.2},
    "card": {"branch": -0.4, "call_center": -0.4, "mobile_app": 0.5, "web": 0.3, "email": 0.1, "push": 0.4,
             "sms": 0.0},
    "account": {"branch": -0.2, "call_center": -0.4, "mobile_app": 0.4, "web": 0.4, "email": 0.0, "push": 0.2,
                "sms": 0.0},
    "service": {"branch": -0.2, "call_center": -0.2, "mobile_app": 0.4, "web": 0.2, "email": 0.0, "push": 0.3,
                "sms": 0.2},
}
# Best contact hours per channel (peak of the time-of-contact effect).
CHANNEL_PEAK_HOUR = {
    "mobile_app": 20, "web": 21, "email": 8, "push": 12, "sms": 18, "branch": 11, "call_center": 18,
}
DIGITAL_CHANNELS = ("mobile_app", "web", "push", "email")
# Channels where the bank chooses when the customer hears from it: the time preference applies there.
SENT_CHANNELS = ("email", "push", "sms", "call_center")

# Time preference (docs/simulator.md, "Time preference"): each customer has a latent preferred
# contact hour. Offers sent near it are answered more often: `TIME_PREFERENCE_WEIGHT` x
# cos(2 pi (hour - preferred hour) / 24) on the logit, +0.7 at the preferred hour and -0.7
# twelve hours away, zero on average over the day, so the bank's marginals barely move.
TIME_PREFERENCE_WEIGHT = 0.7
# The preferred hour is drawn from a mixture of the day's habits: (mean hour, sd in hours) per mode.
PREFERRED_HOUR_MODES = {"commute": (7.5, 0.8), "morning": (10.5, 1.2), "lunch": (12.5, 0.8), "evening": (20.0, 1.3),
                        "spread": (15.0, 4.0)}
# Each mode's share by age band (age at the window's start below 35, below 65, 65 and over), in
# the order of PREFERRED_HOUR_MODES: the young read in the evening, the employed on the way to
# work and at lunch, the retired in the morning.
PREFERRED_HOUR_SHARES = {35: (0.15, 0.05, 0.15, 0.55, 0.10),
                         65: (0.30, 0.05, 0.25, 0.30, 0.10),
                         float("inf"): (0.10, 0.45, 0.15, 0.20, 0.10)}
# The trace it leaves: a login's time of day is the preferred hour plus normal noise of this sd
# with probability LOGIN_NEAR_PREFERENCE, otherwise an hour of the bank-wide login profile below.
LOGIN_NEAR_PREFERENCE = 0.65
LOGIN_HOUR_SD = 1.5
LOGIN_HOUR_PROFILE = (0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 0.8, 1.5, 1.8, 1.5, 1.3, 1.3,
                      1.6, 1.4, 1.2, 1.2, 1.3, 1.5, 1.8, 2.0, 2.1, 1.9, 1.3, 0.6)
