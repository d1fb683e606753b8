//! The MicroVm state machine and its verbs.
