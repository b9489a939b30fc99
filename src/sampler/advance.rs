//! One engine step over every sample in flight. Per group of samples that can
//! share a model call (same sample shape and token count): one batched U-Net call
//! with each row at its own timestep, CFG per slot, reward evaluation and reward-
//! gradient guidance for the samples that need it (one batch per reward), then
//! each slot's own scheduler update (on the host in diffusers' exact order, or as
//! one fused [`Backend::guided_step`](crate::backend::Backend::guided_step) where
//! the model output stays on the device); finally each sample moves to its next
//! repeat or step, resampling its particles where its steering says so.
//!
//! A failure that belongs to one sample (a non-finite value, its reward) fails that
//! sample only; a failed model call fails every sample in it.

use super::model_call::{guidance_needs_host, guided_output, ModelCall, Slot};
use super::settings::Shared;
use super::{check_finite, Condition, NoiseSource, SampleOutput, SampleRun, SlotSampler};
use crate::backend::StepBuffers;
use crate::error::{Error, Result};
use crate::guidance::reward::{guide_rows, GuideRow, NoiseLevel, RowGuidance};
use crate::reward::{Reward, SampleShape};

/// What one engine step did.
#[derive(Debug, Default)]
pub struct StepReport {
    /// Model calls made (one per group of samples of one shape).
    pub model_calls: usize,
    /// Slots (particles) summed over those calls.
    pub slots: usize,
    /// Rows (slots plus CFG's unconditional rows) summed over those calls.
    pub rows: usize,
    /// Samples that failed during the step, by their position in the runs given,
    /// with the reason. Drop them before the next step.
    pub failed: Vec<(usize, Error)>,
}

/// `members` grouped by their reward (the same value, not an equal one), in order
/// of first appearance; members without a reward are left out.
fn by_reward<'r>(
    runs: &[SampleRun<'r>],
    members: Vec<usize>,
) -> Vec<(Shared<'r, dyn Reward + 'r>, Vec<usize>)> {
    let mut groups: Vec<(Shared<'r, dyn Reward + 'r>, Vec<usize>)> = Vec::new();
    for m in members {
        let Some(reward) = &runs[m].settings.reward else {
            continue;
        };
        match groups.iter_mut().find(|(r, _)| r.same(reward)) {
            Some((_, group)) => group.push(m),
            None => groups.push((reward.clone(), vec![m])),
        }
    }
    groups
}

/// Whether `run` evaluates its reward during its current step.
fn needs_reward(run: &SampleRun) -> bool {
    run.settings.evaluates_reward_at(run.step)
}

/// Samples that can share a model call: same height, width and token count.
fn call_key(run: &SampleRun) -> (usize, usize, Option<usize>) {
    let tokens = match &run.spec.condition {
        Condition::Embedding { tokens, .. } => Some(*tokens),
        _ => None,
    };
    (run.height, run.width, tokens)
}

impl<'r> SlotSampler<'_> {
    /// Takes every unfinished sample of `runs` through its next step (or repeat).
    pub fn advance(&self, runs: &mut [SampleRun<'r>], noise: &dyn NoiseSource) -> StepReport {
        let mut report = StepReport::default();
        let mut keys: Vec<(usize, usize, Option<usize>)> = Vec::new();
        for run in runs.iter().filter(|r| !r.is_done()) {
            let key = call_key(run);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        for key in keys {
            let members: Vec<usize> = (0..runs.len())
                .filter(|&i| !runs[i].is_done() && call_key(&runs[i]) == key)
                .collect();
            self.advance_group(runs, &members, noise, &mut report);
        }
        report
    }

    fn advance_group(
        &self,
        runs: &mut [SampleRun<'r>],
        members: &[usize],
        noise: &dyn NoiseSource,
        report: &mut StepReport,
    ) {
        let mut failed: Vec<Option<Error>> = vec![None; runs.len()];
        let slots: Vec<Slot> = members
            .iter()
            .flat_map(|&run| {
                (0..runs[run].particles.len()).map(move |particle| Slot { run, particle })
            })
            .collect();
        for &m in members {
            runs[m].snapshot_if_repeated();
        }
        let call = match self.model_call(runs, &slots) {
            Ok(call) => call,
            Err(e) => {
                report
                    .failed
                    .extend(members.iter().map(|&m| (m, e.clone())));
                return;
            }
        };
        report.model_calls += 1;
        report.slots += slots.len();
        report.rows += slots.len() + call.cfg_rows;

        let fused = self.fused_steps();
        // The guided outputs on the host, per slot, where needed: every slot on the
        // host path; on the fused path the rewarded ones and those whose guidance
        // method sums over the sample (APG, CFG-Zero*).
        let host_slots: Vec<bool> = slots
            .iter()
            .map(|s| !fused || needs_reward(&runs[s.run]) || guidance_needs_host(&runs[s.run]))
            .collect();
        // Fused path: what the host-guided slots add to their conditional row.
        let mut guidance_shifts: Vec<Option<Vec<f32>>> = vec![None; slots.len()];
        let per = slots
            .first()
            .map_or(0, |s| runs[s.run].particles[s.particle].latent.len());
        let mut outputs: Vec<Vec<f32>> = vec![Vec::new(); slots.len()];
        if host_slots.iter().any(|&h| h) {
            match self.backend.to_host(&call.output) {
                Ok(out) => {
                    for (k, slot) in slots.iter().enumerate() {
                        if !host_slots[k] || failed[slot.run].is_some() {
                            continue;
                        }
                        let run = &mut runs[slot.run];
                        let mut guided = vec![0f32; per];
                        let on_host = guidance_needs_host(run);
                        guided_output(&call, &out, k, run, slot.particle, &mut guided);
                        if fused && on_host {
                            let cond =
                                &out[(call.cfg_rows + k) * per..(call.cfg_rows + k + 1) * per];
                            guidance_shifts[k] =
                                Some(guided.iter().zip(cond).map(|(g, c)| g - c).collect());
                        }
                        let run = &runs[slot.run];
                        let level = NoiseLevel::at(&*run.settings.scheduler, run.step);
                        if let Err(e) = check_finite(
                            &guided,
                            &|| format!("the model output of {}", run.name(slot.particle)),
                            run.step,
                            level.timestep,
                        ) {
                            failed[slot.run] = Some(e);
                        }
                        outputs[k] = guided;
                    }
                }
                Err(e) => {
                    report
                        .failed
                        .extend(members.iter().map(|&m| (m, e.clone())));
                    return;
                }
            }
        }

        // Reward evaluation and guidance, one batch per reward.
        let mut shifts: Vec<Option<Vec<f32>>> = vec![None; slots.len()];
        let rewarded: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&m| needs_reward(&runs[m]) && failed[m].is_none())
            .collect();
        for (reward, group) in by_reward(runs, rewarded) {
            self.guide_group(
                runs,
                &slots,
                &group,
                &reward,
                &outputs,
                &mut shifts,
                &mut failed,
            );
        }

        if fused {
            // A host-guided slot's step starts from its conditional row plus the
            // difference to its guided output (and the reward's shift on top).
            for (k, g) in guidance_shifts.iter().enumerate() {
                if let Some(g) = g {
                    let total = match &shifts[k] {
                        Some(r) => g.iter().zip(r).map(|(a, b)| a + b).collect(),
                        None => g.clone(),
                    };
                    shifts[k] = Some(total);
                }
            }
            self.fused_update(
                runs,
                &slots,
                &call,
                &shifts,
                &guidance_shifts,
                noise,
                &mut failed,
                members,
            );
        } else {
            for (k, slot) in slots.iter().enumerate() {
                if failed[slot.run].is_some() {
                    continue;
                }
                if let Some(shift) = &shifts[k] {
                    for (m, &d) in outputs[k].iter_mut().zip(shift) {
                        *m += d;
                    }
                }
                if let Err(e) = host_update(&mut runs[slot.run], slot.particle, &outputs[k], noise)
                {
                    failed[slot.run] = Some(e);
                }
            }
        }

        for &m in members {
            if failed[m].is_none() {
                if let Err(e) = runs[m].end_step(noise) {
                    failed[m] = Some(e);
                }
            }
        }
        for &m in members {
            if let Some(e) = failed[m].take() {
                report.failed.push((m, e));
            }
        }
    }

    /// Evaluates `reward` on the estimates of every particle of `group` and
    /// records each slot's output shift and each sample's step rewards.
    #[allow(clippy::too_many_arguments)]
    fn guide_group(
        &self,
        runs: &mut [SampleRun<'r>],
        slots: &[Slot],
        group: &[usize],
        reward: &Shared<'r, dyn Reward + 'r>,
        outputs: &[Vec<f32>],
        shifts: &mut [Option<Vec<f32>>],
        failed: &mut [Option<Error>],
    ) {
        let members: Vec<usize> = (0..slots.len())
            .filter(|&k| group.contains(&slots[k].run))
            .collect();
        let Some(&first) = members.first() else {
            return;
        };
        let first_run = &runs[slots[first].run];
        let shape = SampleShape::new(
            first_run.height,
            first_run.width,
            self.unet.config().in_channels,
        );
        let rows: Vec<GuideRow> = members
            .iter()
            .map(|&k| {
                let run = &runs[slots[k].run];
                GuideRow {
                    level: NoiseLevel::at(&*run.settings.scheduler, run.step),
                    guidance: &run.settings.reward_guidance,
                }
            })
            .collect();
        let mut latents = Vec::new();
        let mut model_outputs = Vec::new();
        for &k in &members {
            let slot = slots[k];
            latents.extend_from_slice(&runs[slot.run].particles[slot.particle].latent);
            model_outputs.extend_from_slice(&outputs[k]);
        }
        let name = |j: usize| {
            let slot = slots[members[j]];
            runs[slot.run].name(slot.particle)
        };
        let results = match guide_rows(&**reward, shape, &rows, &latents, &model_outputs, &name) {
            Ok(results) => results,
            Err(e) => {
                for &m in group {
                    failed[m].get_or_insert_with(|| e.clone());
                }
                return;
            }
        };
        for (&k, result) in members.iter().zip(results) {
            let slot = slots[k];
            match result {
                Ok(RowGuidance { reward, shift }) => {
                    let run = &mut runs[slot.run];
                    let particles = run.particles.len();
                    let rewards = run.step_rewards.get_or_insert_with(|| vec![0.0; particles]);
                    rewards[slot.particle] = reward;
                    shifts[k] = shift;
                }
                Err(e) => {
                    failed[slot.run].get_or_insert(e);
                }
            }
        }
    }

    /// The update of every slot as one [`Backend::guided_step`] on the device that
    /// holds the model output.
    #[allow(clippy::too_many_arguments)]
    fn fused_update(
        &self,
        runs: &mut [SampleRun<'r>],
        slots: &[Slot],
        call: &ModelCall,
        shifts: &[Option<Vec<f32>>],
        host_guided: &[Option<Vec<f32>>],
        noise: &dyn NoiseSource,
        failed: &mut [Option<Error>],
        members: &[usize],
    ) {
        let live: Vec<usize> = (0..slots.len())
            .filter(|&k| failed[slots[k].run].is_none())
            .collect();
        if live.is_empty() {
            return;
        }
        let per = runs[slots[live[0]].run].particles[0].latent.len();
        let any = |f: &dyn Fn(&SampleRun) -> bool| live.iter().any(|&k| f(&runs[slots[k].run]));
        let with_noise = any(&|r| r.settings.scheduler.needs_noise(r.step));
        let with_history = any(&|r| r.settings.scheduler.records_history());
        let with_shift = live.iter().any(|&k| shifts[k].is_some());
        let (mut latents, mut plan, mut included) = (Vec::new(), Vec::new(), Vec::new());
        let (mut noise_all, mut history_all, mut shift_all) = (Vec::new(), Vec::new(), Vec::new());
        let mut fresh = vec![0f32; per];
        for &k in &live {
            let slot = slots[k];
            let run = &runs[slot.run];
            let particle = &run.particles[slot.particle];
            let scheduler = &*run.settings.scheduler;
            let update = match scheduler.linear_step(run.step, &particle.state) {
                Ok(update) => update,
                Err(e) => {
                    failed[slot.run].get_or_insert(e);
                    continue;
                }
            };
            let draws = scheduler.needs_noise(run.step);
            if draws {
                if let Err(e) = run.draw(noise, slot.particle, run.step_stream(), &mut fresh) {
                    failed[slot.run].get_or_insert(e);
                    continue;
                }
            }
            latents.extend_from_slice(&particle.latent);
            if with_noise {
                match draws {
                    true => noise_all.extend_from_slice(&fresh),
                    false => noise_all.resize(noise_all.len() + per, 0.0),
                }
            }
            if with_history {
                match particle.state.history.last().filter(|p| p.len() == per) {
                    Some(prev) => history_all.extend_from_slice(prev),
                    None => history_all.resize(history_all.len() + per, 0.0),
                }
            }
            if with_shift {
                match &shifts[k] {
                    Some(shift) => shift_all.extend_from_slice(shift),
                    None => shift_all.resize(shift_all.len() + per, 0.0),
                }
            }
            let mut slot_step = call.slot_step(k, run, shifts[k].is_some(), update);
            if host_guided[k].is_some() {
                // The guidance was applied on the host: the shift carries it.
                slot_step.uncond_row = None;
                slot_step.cfg_scale = 1.0;
                slot_step.cfg_rescale = 0.0;
            }
            plan.push(slot_step);
            included.push(k);
        }
        if plan.is_empty() {
            return;
        }
        let result = self.backend.guided_step(
            &call.output,
            &plan,
            &StepBuffers {
                latents: &latents,
                history: with_history.then_some(&history_all[..]),
                noise: with_noise.then_some(&noise_all[..]),
                shift: with_shift.then_some(&shift_all[..]),
            },
        );
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                for &m in members {
                    failed[m].get_or_insert_with(|| e.clone());
                }
                return;
            }
        };
        for (j, &k) in included.iter().enumerate() {
            let slot = slots[k];
            if failed[slot.run].is_some() {
                continue;
            }
            let run = &mut runs[slot.run];
            let next = &result.next[j * per..(j + 1) * per];
            let timestep = run.settings.scheduler.timestep(run.step);
            if let Err(e) = check_finite(
                next,
                &|| format!("the fused step's output of {}", run.name(slot.particle)),
                run.step,
                timestep,
            ) {
                failed[slot.run] = Some(e);
                continue;
            }
            let settings = run.settings.clone();
            let particle = &mut run.particles[slot.particle];
            if settings.scheduler.records_history() {
                settings.scheduler.record_history(
                    &mut particle.state,
                    result.x0[j * per..(j + 1) * per].to_vec(),
                );
            }
            particle.latent.copy_from_slice(next);
        }
    }

    /// The results of finished samples: each keeps its particle with the best final
    /// reward (the final rewards of one reward are evaluated in one batch).
    pub fn finish_all(&self, runs: Vec<SampleRun<'r>>) -> Vec<Result<SampleOutput>> {
        let mut finals: Vec<Option<Result<Vec<f32>>>> = runs
            .iter()
            .map(|r| r.settings.reward.is_none().then(|| Ok(Vec::new())))
            .collect();
        let pending: Vec<usize> = (0..runs.len()).filter(|&i| finals[i].is_none()).collect();
        for (reward, group) in by_reward(&runs, pending) {
            let mut shaped: Vec<Vec<usize>> = Vec::new();
            for &i in &group {
                match shaped.iter_mut().find(|s| {
                    (runs[s[0]].height, runs[s[0]].width) == (runs[i].height, runs[i].width)
                }) {
                    Some(s) => s.push(i),
                    None => shaped.push(vec![i]),
                }
            }
            for same_shape in shaped {
                let shape = SampleShape::new(
                    runs[same_shape[0]].height,
                    runs[same_shape[0]].width,
                    self.unet.config().in_channels,
                );
                let mut data = Vec::new();
                for &i in &same_shape {
                    for p in &runs[i].particles {
                        data.extend_from_slice(&p.latent);
                    }
                }
                match reward.evaluate(shape, &data, None) {
                    Ok(values) => {
                        let mut at = 0;
                        for &i in &same_shape {
                            let n = runs[i].particles.len();
                            finals[i] = Some(match values.get(at..at + n) {
                                Some(v) => Ok(v.to_vec()),
                                None => Err(Error::shape(
                                    "reward",
                                    format!(
                                        "{} final values for {} samples",
                                        values.len(),
                                        data.len() / shape.len().max(1)
                                    ),
                                )),
                            });
                            at += n;
                        }
                    }
                    Err(e) => {
                        for &i in &same_shape {
                            finals[i] = Some(Err(e.clone()));
                        }
                    }
                }
            }
        }
        runs.into_iter()
            .zip(finals)
            .map(|(run, rewards)| {
                let rewards = rewards.unwrap_or_else(|| Ok(Vec::new()))?;
                if let Some(k) = rewards.iter().position(|r| !r.is_finite()) {
                    return Err(Error::NonFinite {
                        what: format!("the final reward of {}", run.name(k)),
                        step: run.num_steps(),
                        timestep: 0.0,
                    });
                }
                // The best final reward; ties (and runs without a reward) keep
                // the lowest particle.
                let best = (0..run.particles.len())
                    .max_by(|&a, &b| {
                        let by_reward = match (rewards.get(a), rewards.get(b)) {
                            (Some(x), Some(y)) => x.total_cmp(y),
                            _ => std::cmp::Ordering::Equal,
                        };
                        by_reward.then(b.cmp(&a))
                    })
                    .unwrap_or(0);
                let channels = self.unet.config().in_channels;
                let reward = rewards.get(best).copied();
                let height = run.height;
                let width = run.width;
                let mut particles = run.particles;
                Ok(SampleOutput {
                    height,
                    width,
                    channels,
                    data: std::mem::take(&mut particles[best].latent),
                    reward,
                    particle: best,
                })
            })
            .collect()
    }
}

/// One slot's scheduler step on the host from its guided output.
fn host_update(
    run: &mut SampleRun,
    particle: usize,
    output: &[f32],
    noise: &dyn NoiseSource,
) -> Result<()> {
    let settings = run.settings.clone();
    let scheduler = &*settings.scheduler;
    let per = output.len();
    let mut fresh = Vec::new();
    if scheduler.needs_noise(run.step) {
        fresh = vec![0f32; per];
        run.draw(noise, particle, run.step_stream(), &mut fresh)?;
    }
    let noise = (!fresh.is_empty()).then_some(&fresh[..]);
    let mut next = vec![0f32; per];
    let step = run.step;
    let p = &mut run.particles[particle];
    scheduler.step(step, &mut p.state, &p.latent, output, noise, &mut next)?;
    check_finite(
        &next,
        &|| format!("the scheduler output of {}", run.name(particle)),
        step,
        scheduler.timestep(step),
    )?;
    run.particles[particle].latent = next;
    Ok(())
}
