"""Outbound campaigns: who gets which offer, on which channel, at what hour, within each channel's
capacity (`nextbest plan`).

`campaign.plan_campaign` runs one day's plan through the batch decision path (`audience`: the
rules of `/recommend` as arrays), values the offers (`plan`), assigns the contacts (`assign`: the
Lagrangian dual and HiGHS), learns send hours (`sendtime`), and `report.write_plan` logs the
decisions and writes the contact lists and the report.
"""

from nextbest.serving.outbound.campaign import Plan, plan_campaign
from nextbest.serving.outbound.report import render_html, write_plan

__all__ = ["Plan", "plan_campaign", "render_html", "write_plan"]
