//! The runtime and the tape, with the one op that exists in every build
//! (ReLU): pooled allocation, gradient accumulation, eval mode, and the
//! errors a user sees.

use unet_wgpu::ops::relu::relu;
use unet_wgpu::testing::{gpu, random_vec};
use unet_wgpu::{Backend, GpuError, Step};

#[test]
fn backend_names_parse_and_unknown_ones_are_named_in_the_error() {
    assert_eq!("Vulkan".parse::<Backend>().unwrap(), Backend::Vulkan);
    assert_eq!("gl".parse::<Backend>().unwrap(), Backend::Gl);
    let err = "cuda".parse::<Backend>().unwrap_err();
    assert!(matches!(err, GpuError::UnknownBackend(_)));
    let msg = err.to_string();
    assert!(msg.contains("\"cuda\"") && msg.contains("vulkan"), "{msg}");
}

#[test]
fn steps_after_the_first_allocate_no_buffers() {
    let gpu = gpu();
    let shape = [2, 3, 17, 19];
    let data = random_vec(1, shape.iter().product());
    let x = gpu.upload(&data, &shape).with_grad();
    let dy = gpu.upload(&data, &shape);
    let mut allocations = Vec::new();
    for _ in 0..5 {
        let mut step = Step::train(gpu);
        let y = relu(&mut step, &x);
        let z = relu(&mut step, &y);
        let grads = step.backward(vec![(z, dy.clone())]);
        assert!(grads.get(&x).is_some());
        drop(grads);
        step.submit();
        gpu.wait();
        allocations.push(gpu.pool_stats().allocations);
    }
    // Other tests share this thread's GPU, so compare counts, not absolute values.
    assert!(allocations.windows(2).skip(1).all(|w| w[0] == w[1]), "allocations per step: {allocations:?}");
}

#[test]
fn a_tensor_used_twice_gets_the_sum_of_both_gradients() {
    let gpu = gpu();
    let shape = [1, 2, 3, 5];
    let data = random_vec(2, 30);
    let x = gpu.upload(&data, &shape).with_grad();
    let (dy1, dy2) = (random_vec(3, 30), random_vec(4, 30));
    let mut step = Step::train(gpu);
    let y1 = relu(&mut step, &x);
    let y2 = relu(&mut step, &x);
    let (d1, d2) = (gpu.upload(&dy1, &shape), gpu.upload(&dy2, &shape));
    let grads = step.backward(vec![(y1, d1), (y2, d2)]);
    let dx = grads.get(&x).unwrap().clone();
    step.submit();
    let got = gpu.read(&dx);
    for i in 0..30 {
        let want = if data[i] > 0.0 { dy1[i] + dy2[i] } else { 0.0 };
        assert_eq!(got[i], want, "element {i}");
    }
}

#[test]
fn eval_steps_record_nothing() {
    let gpu = gpu();
    let x = gpu.upload(&random_vec(5, 8), &[8]).with_grad();
    let mut step = Step::eval(gpu);
    let y = relu(&mut step, &x);
    assert!(!y.requires_grad());
    assert_eq!(step.tape_len(), 0);
    let mut train = Step::train(gpu);
    let y = relu(&mut train, &x);
    assert!(y.requires_grad());
    assert_eq!(train.tape_names(), ["relu"]);
}

#[test]
#[should_panic(expected = "bindings given")]
fn a_dispatch_with_the_wrong_bindings_names_the_kernel() {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Params {
        n: u32,
    }
    let gpu = gpu();
    let x = gpu.upload(&[1.0], &[1]);
    let kernel = gpu.kernel(&unet_wgpu::shader!("relu"), "relu_forward", &[("WG", 256.0)]);
    let mut enc = gpu.encoder();
    gpu.dispatch(&mut enc, &kernel, &Params { n: 1 }, &[(1, &x)], [1, 1, 1]);
}

#[test]
fn parameters_are_views_into_one_arena_and_gradients_land_there() {
    use unet_wgpu::autograd::params::{ParamArena, ParamSpec};
    let gpu = gpu();
    let specs = vec![
        ParamSpec { name: "first".into(), shape: vec![5], init: random_vec(1, 5) },
        ParamSpec { name: "second".into(), shape: vec![2, 3], init: random_vec(2, 6) },
    ];
    let arena = ParamArena::new(gpu, &specs);
    let second = &arena.get("second").unwrap();
    assert!(second.value.offset() > 0 && second.value.requires_grad());
    let dy = random_vec(3, 6);
    let mut step = Step::train(gpu);
    arena.zero_grads(&mut step.enc);
    let y = relu(&mut step, &second.value);
    let dyt = gpu.upload(&dy, &[2, 3]);
    let grads = step.backward_into(vec![(y.clone(), dyt)], arena.grads());
    assert_eq!(grads.get(&second.value).unwrap().offset(), second.grad.offset());
    step.submit();
    let x = &specs[1].init;
    let want_y: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
    let want_dx: Vec<f32> = x.iter().zip(&dy).map(|(v, g)| if *v > 0.0 { *g } else { 0.0 }).collect();
    assert_eq!(gpu.read(&y), want_y);
    assert_eq!(gpu.read(&second.grad), want_dx);
    assert_eq!(gpu.read(&arena.get("first").unwrap().grad), vec![0.0; 5]);
}

#[test]
fn readback_rings_deliver_without_waiting_and_skip_busy_slots() {
    let gpu = gpu();
    let mut ring = gpu.readback(4, 2);
    let t = gpu.upload(&[1.0, 2.0, 3.0, 4.0], &[4]);
    for round in 0..3 {
        let mut enc = gpu.encoder();
        assert!(ring.copy(&mut enc, &t), "round {round}: a slot should be free");
        gpu.submit(enc);
        ring.submitted();
        gpu.wait();
        assert_eq!(ring.latest(gpu), Some(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(ring.latest(gpu), None, "each copy is delivered once");
    }
    // Two copies in flight fill the ring; a third is skipped, not waited for.
    let mut enc = gpu.encoder();
    assert!(ring.copy(&mut enc, &t) && ring.copy(&mut enc, &t));
    assert!(!ring.copy(&mut enc, &t));
    gpu.submit(enc);
    ring.submitted();
}
