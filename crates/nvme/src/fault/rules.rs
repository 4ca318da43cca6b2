//! Injected errors: which commands an [`EioRule`] matches, when it fires, and the counter each
//! armed rule keeps.

use bluepoll_base::sync::lock;

use super::namespace::FaultShared;
use crate::command::{IoCmd, Opcode, Status};

/// Which commands an [`EioRule`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOps {
    /// Read commands; an injected error completes them with Unrecovered Read Error.
    Read,
    /// Write, WriteZeroes and Trim.
    Write,
    /// Flush commands; an injected error completes them with Write Fault.
    Flush,
    /// Every command.
    Any,
}

impl FaultOps {
    /// Whether a command with opcode `op` counts toward, and can be failed by, a rule with
    /// these `ops`.
    pub fn matches(self, op: Opcode) -> bool {
        match self {
            FaultOps::Read => op == Opcode::Read,
            FaultOps::Write => op.modifies(),
            FaultOps::Flush => op == Opcode::Flush,
            FaultOps::Any => true,
        }
    }

    pub(super) fn parse(text: &str) -> Option<FaultOps> {
        match text {
            "read" => Some(FaultOps::Read),
            "write" => Some(FaultOps::Write),
            "flush" => Some(FaultOps::Flush),
            "any" => Some(FaultOps::Any),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            FaultOps::Read => "read",
            FaultOps::Write => "write",
            FaultOps::Flush => "flush",
            FaultOps::Any => "any",
        }
    }
}

/// When an [`EioRule`] fires, among the commands its `ops` match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EioTrigger {
    /// The Nth matching command (1-based), once. `Nth(0)` never fires.
    Nth(u64),
    /// Matching commands number N, 2N, 3N, … `Every(0)` never fires.
    Every(u64),
    /// Matching commands whose LBA range overlaps `first..=last`, every time; a Flush has no
    /// range and never matches. `first > last` never fires.
    Lbas {
        /// First LBA of the failing range.
        first: u64,
        /// Last LBA of the failing range (inclusive).
        last: u64,
    },
}

/// Makes matching commands fail with a media error (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EioRule {
    /// Which commands the rule counts and may fail.
    pub ops: FaultOps,
    /// Which of those it fails.
    pub trigger: EioTrigger,
}

pub(super) struct ArmedRule {
    pub(super) rule: EioRule,
    /// Commands the rule's `ops` matched since it was armed.
    pub(super) matched: u64,
}

impl FaultShared {
    /// Counts `cmd` against every armed rule and says how it fails, if a rule fires.
    pub(super) fn injected_error(&self, cmd: &IoCmd) -> Option<Status> {
        let mut rules = lock(&self.rules);
        let mut fires = false;
        for armed in rules.iter_mut() {
            if !armed.rule.ops.matches(cmd.opcode) {
                continue;
            }
            armed.matched += 1;
            fires |= match armed.rule.trigger {
                EioTrigger::Nth(n) => armed.matched == n,
                EioTrigger::Every(n) => n != 0 && armed.matched % n == 0,
                EioTrigger::Lbas { first, last } => {
                    let cmd_last = cmd
                        .lba
                        .saturating_add((cmd.blocks as u64).saturating_sub(1));
                    cmd.opcode != Opcode::Flush && cmd.lba <= last && cmd_last >= first
                }
            };
        }
        fires.then_some(if cmd.opcode == Opcode::Read {
            Status::UNRECOVERED_READ_ERROR
        } else {
            Status::WRITE_FAULT
        })
    }
}
