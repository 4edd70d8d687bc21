//! The sans-IO core: the protocols as functions and state machines over bytes and time. Nothing
//! here touches a socket, a task or a clock; everything is tested without one.

pub mod eio;
pub mod heartbeat;
pub mod sio;
pub mod ws;
