"""``appliance sysconfig``: declarative host tuning (plan, apply, verify, rollback, persist)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "host tuning from a profile: plan, apply, verify, rollback, persist (hugepages, IRQs, sysctls, ...)"
DESCRIPTION = """\
Tune this Linux host from a profile in sysconfig/profiles/ (instrument, hpc-node, dev, ...):
hugepages per NUMA node with hugetlbfs mounts, IRQ affinity, irqbalance banned CPUs, cpufreq
governor and energy preference, sysctls, transparent hugepages and kernel command-line items.

  list      the profiles found, each with its description
  plan      the profile's description, then every item's current and desired value
            (IRQs of one device and alike items grouped; risky changes marked ! with
            why); writes nothing
  apply     change what differs, journalling each old value first (idempotent)
  verify    exit 0 when the host matches, 1 on drift or a missing object,
            3 when only a reboot is pending (kernel command line configured, not running)
  rollback  restore the values journalled by apply/persist (/var/lib/appliance/sysconfig)
  persist   write sysctl.d, the irqbalance env file, a boot-time systemd unit and the kernel
            command line (grubby, BLS or /etc/default/grub; otherwise prints the line)

examples:
  appliance sysconfig list
  appliance sysconfig plan --profile instrument
  sudo appliance sysconfig apply --profile instrument
  appliance sysconfig verify --profile instrument --json
  sudo appliance sysconfig rollback
  appliance sysconfig plan --profile hpc-node --root tests/data/hosts/dual-socket-gpu

The same commands exist as scripts for provisioning: sysconfig/plan, sysconfig/apply, ...
See docs/sysconfig.md.
"""

ACTIONS = ("list", "plan", "apply", "verify", "rollback", "persist")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do")
    parser.add_argument(
        "--profile",
        metavar="NAME",
        help="profile name (sysconfig/profiles/NAME.toml) or path to a .toml file; "
        "required except for list and rollback",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="read and write /proc, /sys, /etc, /var/lib under DIR (default: /)",
    )
    parser.add_argument(
        "--profiles-dir",
        type=Path,
        action="append",
        metavar="DIR",
        help="look for profiles here (repeatable; default: "
        "/etc/appliance/sysconfig/profiles, then the checkout's)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from appliance import tuning

    if args.action == "list":
        return _list(args)
    if args.action != "rollback" and not args.profile:
        names = ", ".join(tuning.list_profiles(args.profiles_dir)) or "none found"
        print(
            f"error: --profile NAME is required for {args.action} (profiles: {names})",
            file=sys.stderr,
        )
        return 2
    try:
        if args.action == "plan":
            report = tuning.plan(args.profile, args.root, args.profiles_dir)
            code = 0
        elif args.action == "apply":
            report = tuning.apply(args.profile, args.root, profile_dirs=args.profiles_dir)
            code = report.exit_code
        elif args.action == "verify":
            report = tuning.verify(args.profile, args.root, args.profiles_dir)
            code = report.exit_code
        elif args.action == "rollback":
            report = tuning.rollback(args.root)
            code = report.exit_code
        else:
            report = tuning.persist(args.profile, args.root, profile_dirs=args.profiles_dir)
            code = report.exit_code
    except tuning.ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, tuning.JournalBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"error: {exc} (apply, persist and rollback need root)", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(report.to_text())
    return code


def _list(args: argparse.Namespace) -> int:
    """``list``: every profile found with its description (as ``tuned-adm list``)."""
    from appliance import tuning

    dirs = args.profiles_dir or tuning.default_profile_dirs()
    rows = []
    for name in tuning.list_profiles(dirs):
        try:
            prof = tuning.load_profile(name, dirs)
            rows.append({"name": name, "description": prof.description, "source": str(prof.sources[-1]) if prof.sources else ""})
        except tuning.ProfileError as exc:
            rows.append({"name": name, "description": "", "error": str(exc)})
    if args.json:
        sys.stdout.write(json.dumps({"profiles": rows, "dirs": [str(d) for d in dirs]}, indent=2) + "\n")
        return 0
    if not rows:
        print(f"no profiles found in {', '.join(map(str, dirs))}: pass --profiles-dir DIR", file=sys.stderr)
        return 1
    width = max(len(r["name"]) for r in rows)
    sys.stdout.write("available profiles:\n")
    for r in rows:
        text = r["description"] or ("(invalid: " + r["error"] + ")" if "error" in r else "(no description)")
        sys.stdout.write(f"- {r['name'].ljust(width)}  {text}\n")
    return 0
