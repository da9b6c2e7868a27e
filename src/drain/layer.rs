use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{ClientClosed, Drain, Draining, Guard, REJECTING, Shared};
use crate::BoxError;
use crate::lease::Credits;

// ===== HTTP =====

/// Counts HTTP requests until their response body ends; answers `503` with
/// `Connection: close` and `Retry-After` while draining. Made by
/// [`Drain::layer`]; every service it makes shares the drain.
///
/// A response with no body on the wire (to `HEAD`, a `2xx` to `CONNECT`,
/// `1xx`, `204`, `304`: hyper's own rule) is finished at its head, since
/// servers drop its body unpolled. An `Err` from the inner service is cut
/// off: no response was sent.
#[derive(Clone, Debug)]
pub struct DrainHttpLayer {
    drain: Drain,
}

impl DrainHttpLayer {
    pub(crate) fn new(drain: Drain) -> Self {
        Self { drain }
    }
}

impl<S> Layer<S> for DrainHttpLayer {
    type Service = DrainHttp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainHttp {
            inner,
            credits: Credits::new(self.drain.shared.clone()),
        }
    }
}

/// The service of [`DrainHttpLayer`].
#[derive(Clone)]
pub struct DrainHttp<S> {
    inner: S,
    /// The drain's state, and the requests' hold on it (no reference count
    /// per request: see `crate::lease`).
    credits: Credits<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for DrainHttp<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainHttp")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> DrainHttp<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the wrapper, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for DrainHttp<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
{
    type Response = Response<DrainBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Never refuse readiness while draining: the refusal is a response.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match Shared::enter_leased(self.credits.take()) {
            Some(guard) => {
                let method = RequestMethod::of(req.method());
                ResponseFuture {
                    kind: Kind::Admitted {
                        future: self.inner.call(req),
                        guard: Some(guard),
                        method,
                    },
                }
            }
            None => ResponseFuture {
                kind: Kind::Refused {
                    retry_after: self.credits.get().retry_after,
                    shared: Some(self.credits.get().clone()),
                },
            },
        }
    }
}

/// What of the request method decides whether its response has a body on
/// the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestMethod {
    Head,
    Connect,
    Other,
}

impl RequestMethod {
    fn of(method: &Method) -> Self {
        if method == Method::HEAD {
            Self::Head
        } else if method == Method::CONNECT {
            Self::Connect
        } else {
            Self::Other
        }
    }

    /// Whether a response with `status` to this method has no body on the
    /// wire: servers send its head only and drop its body unpolled (hyper's
    /// rule: HEAD, a `2xx` to CONNECT, `1xx`, `204`, `304`).
    fn bodiless(self, status: StatusCode) -> bool {
        self == Self::Head
            || (self == Self::Connect && status.is_success())
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Admitted { #[pin] future: F, guard: Option<Guard>, method: RequestMethod },
        Refused { retry_after: u64, shared: Option<Arc<Shared>> },
    }
}

pin_project! {
    /// Response future of [`DrainHttp`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted {
                future,
                guard,
                method,
            } => {
                let response = match ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(e) => {
                        // No response is sent for an error (the server
                        // closes the connection): cut off.
                        drop(guard.take());
                        return Poll::Ready(Err(e));
                    }
                };
                let mut guard = guard.take();
                let closing = guard.as_ref().is_some_and(|g| {
                    g.hold
                        .shared()
                        .phase
                        .load(std::sync::atomic::Ordering::Acquire)
                        >= REJECTING
                });
                if method.bodiless(response.status()) {
                    // Its head is all that is sent: finished now, whatever
                    // its body holds (the server drops it unpolled).
                    if let Some(guard) = guard.take() {
                        guard.finish();
                    }
                }
                let (mut parts, body) = response.into_parts();
                if closing {
                    // Draining: let the client reconnect elsewhere.
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                let body = DrainBody {
                    kind: BodyKind::Tracked {
                        inner: body,
                        guard,
                        is_end_stream: <B as Body>::is_end_stream,
                    },
                };
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            KindProj::Refused {
                retry_after,
                shared,
            } => {
                if let Some(shared) = shared.take() {
                    shared.refused();
                }
                let mut response = Response::new(DrainBody {
                    kind: BodyKind::Empty,
                });
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                // Marks the answer as a refusal (see `crate::retry`).
                response.extensions_mut().insert(Draining::new());
                Poll::Ready(Ok(response))
            }
        }
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Tracked {
            #[pin]
            inner: B,
            guard: Option<Guard>,
            // `B::is_end_stream`, for `drop`, which cannot require `B: Body`.
            is_end_stream: fn(&B) -> bool,
        },
        Empty,
    }
}

pin_project! {
    /// A response body that holds its request's in-flight count until it
    /// ends or is dropped. Read to its end (or dropped when it has nothing
    /// left to send, as servers do with a complete body), the request
    /// finished; dropped before, it was cut off. A response with no body on
    /// the wire (to `HEAD`, a `2xx` to `CONNECT`, `1xx`, `204`, `304`)
    /// finished at its head, and its body holds no count.
    pub struct DrainBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }

    impl<B> PinnedDrop for DrainBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let BodyProj::Tracked { inner, guard, is_end_stream } = this.project().kind.project() {
                if let Some(guard) = guard.take() {
                    if is_end_stream(&inner) {
                        guard.finish();
                    }
                    // Otherwise the guard drops here: cut off.
                }
            }
        }
    }
}

impl<B> fmt::Debug for DrainBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.project().kind.project() {
            BodyProj::Tracked {
                mut inner, guard, ..
            } => {
                let frame = ready!(inner.as_mut().poll_frame(cx));
                let ended = match &frame {
                    None => true,
                    // An error ends the body unfinished: left to `drop`.
                    Some(Err(_)) => false,
                    Some(Ok(_)) => inner.is_end_stream(),
                };
                if ended {
                    // The response is finished: release the count now.
                    if let Some(guard) = guard.take() {
                        guard.finish();
                    }
                }
                Poll::Ready(frame)
            }
            BodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Tracked { inner, .. } => inner.is_end_stream(),
            BodyKind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Tracked { inner, .. } => inner.size_hint(),
            BodyKind::Empty => SizeHint::with_exact(0),
        }
    }
}

// ===== any service =====

/// Counts calls until their future completes; fails new calls with
/// [`Draining`] while draining. Made by [`Drain::rpc_layer`].
#[derive(Clone, Debug)]
pub struct DrainRpcLayer {
    drain: Drain,
}

impl DrainRpcLayer {
    pub(crate) fn new(drain: Drain) -> Self {
        Self { drain }
    }
}

impl<S> Layer<S> for DrainRpcLayer {
    type Service = DrainRpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainRpc {
            inner,
            credits: Credits::new(self.drain.shared.clone()),
        }
    }
}

/// The service of [`DrainRpcLayer`].
#[derive(Clone)]
pub struct DrainRpc<S> {
    inner: S,
    /// The drain's state, and the requests' hold on it (no reference count
    /// per request: see `crate::lease`).
    credits: Credits<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for DrainRpc<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainRpc")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for DrainRpc<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RpcResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match Shared::enter_leased(self.credits.take()) {
            Some(guard) => RpcResponseFuture {
                future: Some(self.inner.call(req)),
                guard: Some(guard),
                refusal: Refusal::None,
            },
            None => RpcResponseFuture {
                future: None,
                guard: None,
                refusal: Refusal::Draining(Some(self.credits.get().clone())),
            },
        }
    }
}

/// Why an [`RpcResponseFuture`] has no inner future.
enum Refusal {
    None,
    /// Refused while draining; the drain, to count the refusal once.
    Draining(Option<Arc<Shared>>),
    ClientClosed,
}

pin_project! {
    /// Response future of [`DrainRpc`] and [`DrainClient`].
    pub struct RpcResponseFuture<F> {
        #[pin]
        future: Option<F>,
        guard: Option<Guard>,
        refusal: Refusal,
    }
}

impl<F> fmt::Debug for RpcResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for RpcResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.future.as_pin_mut() {
            Some(future) => {
                let out = ready!(future.poll(cx));
                if let Some(guard) = this.guard.take() {
                    guard.finish();
                }
                Poll::Ready(out.map_err(Into::into))
            }
            None => match this.refusal {
                Refusal::ClientClosed => Poll::Ready(Err(Box::new(ClientClosed::new()))),
                Refusal::Draining(shared) => {
                    if let Some(shared) = shared.take() {
                        shared.refused();
                    }
                    Poll::Ready(Err(Box::new(Draining::new())))
                }
                Refusal::None => unreachable!("an admitted call has a future"),
            },
        }
    }
}

// ===== outbound clients =====

/// Refuses outbound calls with [`ClientClosed`] once the drain is over and
/// no request is still in flight: a request still running past the grace
/// period may use its dependencies until it finishes. Made by
/// [`Drain::client_layer`].
#[derive(Clone, Debug)]
pub struct DrainClientLayer {
    drain: Drain,
}

impl DrainClientLayer {
    pub(crate) fn new(drain: Drain) -> Self {
        Self { drain }
    }
}

impl<S> Layer<S> for DrainClientLayer {
    type Service = DrainClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainClient {
            inner,
            drain: self.drain.clone(),
        }
    }
}

/// The service of [`DrainClientLayer`].
#[derive(Clone, Debug)]
pub struct DrainClient<S> {
    inner: S,
    drain: Drain,
}

impl<S, Req> Service<Req> for DrainClient<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RpcResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Atomics only: a flag once closed, two loads until then.
        if self.drain.shared.clients_closed() {
            return RpcResponseFuture {
                future: None,
                guard: None,
                refusal: Refusal::ClientClosed,
            };
        }
        RpcResponseFuture {
            future: Some(self.inner.call(req)),
            guard: None,
            refusal: Refusal::None,
        }
    }
}
