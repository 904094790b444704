//! The Windows source: a real-time ETW session with the
//! Microsoft-Windows-Kernel-Process and Microsoft-Windows-Kernel-Network
//! providers (needs Administrator). Payload decoding and aggregation are in
//! `crate::etw` (platform-independent, unit-tested); this module owns the
//! session: start, enable providers, a thread running `ProcessTrace`, stop.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use outflow_core::telemetry::Event;
use outflow_core::Timestamp;
use windows_sys::core::GUID;
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_ALREADY_EXISTS, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Diagnostics::Etw::{
    CloseTrace, ControlTraceW, EnableTraceEx2, OpenTraceW, ProcessTrace, StartTraceW,
    CONTROLTRACE_HANDLE, EVENT_CONTROL_CODE_ENABLE_PROVIDER, EVENT_RECORD,
    EVENT_TRACE_CONTROL_STOP, EVENT_TRACE_LOGFILEW, EVENT_TRACE_PROPERTIES,
    EVENT_TRACE_REAL_TIME_MODE, PROCESSTRACE_HANDLE, PROCESS_TRACE_MODE_EVENT_RECORD,
    PROCESS_TRACE_MODE_REAL_TIME, TRACE_LEVEL_INFORMATION, WNODE_FLAG_TRACED_GUID,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};

use crate::config::AgentConfig;
use crate::etw::{self, EtwAggregator};
use crate::source::{Source, SourceError, SourceStats};

const SESSION_NAME: &str = "OutflowAgent";

/// The ETW callback has no user pointer we control cheaply: one session per
/// process, its aggregator reachable from here.
static SINK: OnceLock<Mutex<Option<Arc<Mutex<EtwAggregator>>>>> = OnceLock::new();

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

unsafe extern "system" fn on_event(rec: *mut EVENT_RECORD) {
    // SAFETY: ETW passes a valid record for the duration of the callback.
    let Some(rec) = (unsafe { rec.as_ref() }) else {
        return;
    };
    let h = &rec.EventHeader;
    let g = h.ProviderId;
    let provider = (u128::from(g.data1) << 96)
        | (u128::from(g.data2) << 80)
        | (u128::from(g.data3) << 64)
        | u128::from(u64::from_be_bytes(g.data4));
    let data: &[u8] = if rec.UserData.is_null() || rec.UserDataLength == 0 {
        &[]
    } else {
        // SAFETY: UserData points at UserDataLength bytes for the callback.
        unsafe {
            std::slice::from_raw_parts(rec.UserData as *const u8, usize::from(rec.UserDataLength))
        }
    };
    let ts = etw::filetime_to_ts(h.TimeStamp);
    let Some(e) = etw::decode(
        provider,
        h.EventDescriptor.Id,
        h.EventDescriptor.Version,
        ts,
        data,
    ) else {
        return;
    };
    if let Some(sink) = SINK.get() {
        if let Some(agg) = sink.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            agg.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        }
    }
}

fn guid(v: u128) -> GUID {
    GUID::from_u128(v)
}

/// Properties buffer: the struct followed by the session name.
struct Props {
    buf: Vec<u64>,
}

impl Props {
    fn new() -> Props {
        let name = wide(SESSION_NAME);
        let base = std::mem::size_of::<EVENT_TRACE_PROPERTIES>();
        let total = base + name.len() * 2 + 1024;
        let mut buf = vec![0u64; total.div_ceil(8)];
        // SAFETY: buf is large enough and 8-aligned for the struct.
        let p = unsafe { &mut *(buf.as_mut_ptr() as *mut EVENT_TRACE_PROPERTIES) };
        p.Wnode.BufferSize = total as u32;
        p.Wnode.Flags = WNODE_FLAG_TRACED_GUID;
        p.Wnode.ClientContext = 1; // QPC timestamps, converted to FILETIME by ProcessTrace
        p.LogFileMode = EVENT_TRACE_REAL_TIME_MODE;
        p.FlushTimer = 1;
        p.LoggerNameOffset = base as u32;
        Props { buf }
    }
    fn ptr(&mut self) -> *mut EVENT_TRACE_PROPERTIES {
        self.buf.as_mut_ptr() as *mut EVENT_TRACE_PROPERTIES
    }
}

fn stop_session() {
    let mut props = Props::new();
    let name = wide(SESSION_NAME);
    // SAFETY: valid properties buffer and NUL-terminated name.
    unsafe {
        ControlTraceW(
            CONTROLTRACE_HANDLE { Value: 0 },
            name.as_ptr(),
            props.ptr(),
            EVENT_TRACE_CONTROL_STOP,
        );
    }
}

fn start_session() -> Result<CONTROLTRACE_HANDLE, u32> {
    let name = wide(SESSION_NAME);
    for attempt in 0..2 {
        let mut props = Props::new();
        let mut h = CONTROLTRACE_HANDLE { Value: 0 };
        // SAFETY: valid out-pointer, name and properties buffer.
        let rc = unsafe { StartTraceW(&mut h, name.as_ptr(), props.ptr()) };
        if rc == 0 {
            return Ok(h);
        }
        if rc == ERROR_ALREADY_EXISTS && attempt == 0 {
            // A previous agent instance left its session behind.
            stop_session();
            continue;
        }
        return Err(rc);
    }
    Err(ERROR_ALREADY_EXISTS)
}

/// Processes running now (Toolhelp snapshot), so traffic of processes that
/// started before the agent is attributed.
fn snapshot(agg: &mut EtwAggregator, now: Timestamp) {
    // SAFETY: plain Win32 calls; the entry is initialised with its size.
    unsafe {
        let snap = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
        if snap == INVALID_HANDLE_VALUE || snap.is_null() {
            return;
        }
        let mut e: PROCESSENTRY32W = std::mem::zeroed();
        e.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
        let mut ok = Process32FirstW(snap, &mut e) != 0;
        while ok {
            let len = e
                .szExeFile
                .iter()
                .position(|c| *c == 0)
                .unwrap_or(e.szExeFile.len());
            let name = String::from_utf16_lossy(&e.szExeFile[..len]);
            agg.known_process(e.th32ProcessID, e.th32ParentProcessID, &name, now);
            ok = Process32NextW(snap, &mut e) != 0;
        }
        CloseHandle(snap);
    }
}

pub struct EtwSource {
    agg: Arc<Mutex<EtwAggregator>>,
    session: CONTROLTRACE_HANDLE,
    trace: PROCESSTRACE_HANDLE,
    thread: Option<JoinHandle<()>>,
}

// SAFETY: the handles are plain integers used only through thread-safe ETW calls.
unsafe impl Send for EtwSource {}

impl EtwSource {
    pub fn new(host: &str, _cfg: &AgentConfig) -> Result<EtwSource, SourceError> {
        let agg = Arc::new(Mutex::new(EtwAggregator::new(host)));
        snapshot(
            &mut agg.lock().unwrap_or_else(|p| p.into_inner()),
            crate::source::now(),
        );
        *SINK
            .get_or_init(|| Mutex::new(None))
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(agg.clone());
        let session = start_session().map_err(|rc| {
            SourceError::Other(format!(
                "cannot start the ETW session (error {rc}): run as Administrator"
            ))
        })?;
        for (provider, keywords) in [
            (etw::KERNEL_PROCESS, etw::KW_PROCESS),
            (etw::KERNEL_NETWORK, etw::KW_NET),
        ] {
            let g = guid(provider);
            // SAFETY: valid session handle and GUID.
            let rc = unsafe {
                EnableTraceEx2(
                    session,
                    &g,
                    EVENT_CONTROL_CODE_ENABLE_PROVIDER,
                    TRACE_LEVEL_INFORMATION as u8,
                    keywords,
                    0,
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                stop_session();
                return Err(SourceError::Other(format!(
                    "cannot enable ETW provider {provider:032x} (error {rc})"
                )));
            }
        }
        let mut name = wide(SESSION_NAME);
        // SAFETY: an all-zero EVENT_TRACE_LOGFILEW is a valid starting value.
        let mut log: EVENT_TRACE_LOGFILEW = unsafe { std::mem::zeroed() };
        log.LoggerName = name.as_mut_ptr();
        log.Anonymous1.ProcessTraceMode =
            PROCESS_TRACE_MODE_REAL_TIME | PROCESS_TRACE_MODE_EVENT_RECORD;
        log.Anonymous2.EventRecordCallback = Some(on_event);
        // SAFETY: log is initialised; name outlives the call.
        let trace = unsafe { OpenTraceW(&mut log) };
        if trace.Value == u64::MAX {
            stop_session();
            return Err(SourceError::Other("OpenTraceW failed".into()));
        }
        let t = trace.Value;
        let thread = std::thread::Builder::new()
            .name("etw".into())
            .spawn(move || {
                let h = PROCESSTRACE_HANDLE { Value: t };
                // SAFETY: blocks delivering events until the session stops.
                let rc = unsafe { ProcessTrace(&h, 1, std::ptr::null(), std::ptr::null()) };
                if rc != 0 {
                    tracing::warn!("ETW ProcessTrace ended with error {rc}");
                }
            })
            .map_err(|e| SourceError::Other(format!("cannot start the ETW thread: {e}")))?;
        Ok(EtwSource {
            agg,
            session,
            trace,
            thread: Some(thread),
        })
    }
}

impl Drop for EtwSource {
    fn drop(&mut self) {
        let _ = self.session;
        stop_session();
        // SAFETY: closing our own trace handle.
        unsafe {
            CloseTrace(self.trace);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Source for EtwSource {
    fn name(&self) -> &'static str {
        "etw"
    }

    fn poll(&mut self, now: Timestamp, out: &mut Vec<Event>) -> Result<(), SourceError> {
        self.agg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(now, out);
        Ok(())
    }

    fn stats(&self) -> SourceStats {
        SourceStats {
            events: self.agg.lock().unwrap_or_else(|p| p.into_inner()).decoded,
            ..Default::default()
        }
    }
}

/// `outflow-agent check` on Windows.
pub fn check() -> bool {
    match start_session() {
        Ok(_) => {
            stop_session();
            println!("  [ ok ] ETW real-time session (Kernel-Process, Kernel-Network)");
            true
        }
        Err(rc) => {
            println!("  [MISS] ETW real-time session: error {rc}");
            println!("         needs: Administrator (or membership in Performance Log Users)");
            false
        }
    }
}
