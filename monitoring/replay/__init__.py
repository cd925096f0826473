"""The replay simulator: the bank's customers answer offers made through the real decision path.

`nextbest simulate` and `benchmarks/bench_bandit.py` run this. One run replays a fixed stream of
requests (customer, channel, time) through `nextbest.serving.engine.DecisionEngine` -- online features of
the work dir's Feast store, both champion models, every rule of configs/rules.yaml with the
decision log as contact history (weekly caps, rejection and credit cool-downs, opt-out and
consent, control groups) -- lets a policy choose among the candidates the rules allow, and draws
the customer's answer from the simulator's offer-response truth.

The truth (`Truth`):
- a product's acceptance is `nextbest.simulation.response.accept_probability` with the customer's true
  P(acquire next month) of the latest snapshot (truth/acquisition.parquet) and latent digital
  affinity (truth/latent.parquet), the request's channel, hour and weekday, and the channel fit of
  the product's category: the function that answered the bank's historical offers.
- The two non-product actions have no truth in the bank simulator; we give them one here
  (ACTION_TRUTH): the same response function with a fixed unprompted-equivalent probability
  (retention call 2%, repayment help 1%), i.e. the same channel, time and affinity effects as a
  product. Their configured prior acceptance (30% and 20% in configs/bandit.yaml) is thus too
  optimistic, as a business guess may be; the policy has to learn that.
- The customer's state is frozen at the latest snapshot, except that an accepted product is held
  from then on (a `product_acquired` event, plus `loan_disbursed` for a loan, which starts the
  credit cool-down): the rules stop offering it and its truth drops to 0.
- Reward = accepted x value, the candidate's value as the policy arbitrates it
  (margin x lever for a product, churn risk x customer value for the retention call, the configured
  value for repayment help). With k > 1 offers, each offer is answered independently.

The traffic (`make_traffic`): customers drawn uniformly from the bank's latest snapshot (opted-out
customers and prospects included: the rules must hold for them), channels from CHANNEL_MIX, hours
from a fixed profile per channel, over a simulated period that starts the day after the snapshot
and lasts so that a customer comes by `visits_per_week` times a week on average; the weekday
follows from the date. Every request carries its simulated time, which the engine logs as the
decision's time, so weekly caps and 30-day cool-downs count simulated days.

Policies and fairness: one policy drives the path (its offers are logged, answered, and shape the
rule state: contact counts, rejections, acquisitions). Any number of shadow policies are scored
on exactly the same steps -- same customer, channel, time and the same allowed candidates -- with
common random numbers for the answers (the same uniform draw per step and arm), and learn from
their own answers. The oracle (true acceptance x value, best among the same candidates) is always
a shadow. Feedback reaches every learner in the same batches of `update_every` decisions (the
driver's answers are posted to the engine at the end of each batch, so the rules too see them
then), which also lets the shadows choose a whole batch with one vectorised call.

A shadow's own accepted offers change nothing in the bank (only the driver's do): what is
compared is each policy's choice in the same situation, step by step.

Regret is expected (pseudo-)regret: oracle's expected value minus the chosen offers' expected
value, both from the truth; realised reward is reported beside it.

A run writes its own decision log (`<workdir>/simulation/<run>.events.db`, never the work dir's
events.db), so our policy starts from its prior every time; the online store is read without
the serving latency budget, so a busy machine never turns an answer degraded at random and the
same seed gives the same run.

The package's parts, each importing only those before it:
- `world`: the offer-response truth (`Truth`, ACTION_TRUTH) and the traffic (`Traffic`,
  `make_traffic`, CHANNEL_MIX and the hour profiles);
- `baselines`: one step as every policy sees it (`Step`), the baselines and the oracle, POLICIES;
- `loop`: the engine on the work dir (`open_engine`), the replay (`run`), its accounting (`Tally`,
  `Result`);
- `outputs`: the run's files, `simulate_workdir` and `ope_against_truth`.
This module re-exports what callers use.
"""

from nextbest.monitoring.replay.baselines import (POLICIES, EpsilonGreedy, Greedy, MabLinear, Oracle, Random, Step,
                                                  VowpalCB)
from nextbest.monitoring.replay.loop import PastRun, Tally
from nextbest.monitoring.replay.outputs import ope_against_truth, simulate_workdir
from nextbest.monitoring.replay.world import CHANNEL_MIX, Truth, make_traffic

__all__ = ["CHANNEL_MIX", "POLICIES", "EpsilonGreedy", "Greedy", "MabLinear", "Oracle", "PastRun", "Random", "Step",
           "Tally", "Truth", "VowpalCB", "make_traffic", "ope_against_truth", "simulate_workdir"]
